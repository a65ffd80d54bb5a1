"""Row 4: a chord of n echo tasks into one notify_admin callback, one sync worker per core."""

from __future__ import annotations

import os
import time

from bench.harness import Bench, BenchError, summary


def run(bench: Bench, n: int) -> None:
    from celery import chord

    from common import calls
    from common.celery_app import current_app
    from contracts import emails, sync

    cores = os.cpu_count() or 1
    # One sync worker per core (as in the I/O row), one emails worker for the callback.
    nodes = [(f"chord-sync{k}", "sync.worker", f"sync{k}") for k in range(cores)]
    nodes.append(("chord-emails", "emails.worker", "emails"))
    procs = [bench.start(name, module, [f"--hostname={node}@%h"]) for name, module, node in nodes]
    for (_, _, node), proc in zip(nodes, procs, strict=True):
        bench.wait_up(current_app(), node, proc)
    times = []
    for _ in range(bench.rounds):
        t0 = time.perf_counter()
        # The header leaves in pipelined round trips (calls.one_round_trip), as a fan-out
        # should: 1.17-1.51 s against 1.62-1.69 s message by message (medians of 3).
        with calls.one_round_trip(current_app()):
            out = chord((sync.echo.s(i) for i in range(n)), emails.notify_admin.s()).apply_async()
        result = out.get(timeout=300)
        times.append(time.perf_counter() - t0)
        if result["items"] != n:
            raise BenchError(f"chord callback saw {result['items']} of {n} results")
    for p in procs:
        p.stop()
    bench.rows.append(
        (
            f"chord of {n} echo -> notify_admin, {cores} sync workers (s)",
            summary(times, 2),
            "-",
            "-",
            "<= 2 s",
        )
    )

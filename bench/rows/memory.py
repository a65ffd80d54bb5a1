"""Row 6: resident memory of each service's worker at rest and after n tasks."""

from __future__ import annotations

import time

from bench.harness import Bench, rss_mb


def run(bench: Bench, n: int) -> None:
    from common.celery_app import current_app
    from common.routing import SERVICES
    from contracts import sync

    procs = {s: bench.start(f"mem-{s}", f"{s}.worker") for s in SERVICES}
    for s, p in procs.items():
        bench.wait_up(current_app(), s, p)
    time.sleep(2)
    at_rest = {s: rss_mb(p.proc.pid) for s, p in procs.items()}
    results = [sync.echo.delay(i) for i in range(n)]
    for res in results:
        res.get(timeout=120)
    after = {s: rss_mb(p.proc.pid) for s, p in procs.items()}
    for s, p in procs.items():
        p.stop()
        bench.rows.append(
            (f"RSS {s} worker at rest / after (MiB)", f"{at_rest[s]:.0f} / {after[s]:.0f}", "-", "-", "-")
        )

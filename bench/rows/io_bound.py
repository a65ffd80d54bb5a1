"""Row 3: an I/O-bound queue, each task a 100 ms CRM call between an ORM read and update."""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.dramatiq_baseline import PROCESSES, THREADS
from bench.harness import Bench, BenchError, log, summary


def run(bench: Bench, n: int, crm: Any) -> None:
    """Each sync calls the CRM sandbox (100 ms) between an ORM read and update.

    Ours: one sync worker per core on the service's defaults (threads, see
    services/sync/service.py); the usual setup: one prefork worker of 4 children; Dramatiq: its
    2 x 8 threads making the same HTTP call. Each runs a batch sized to take a few seconds
    at its expected rate (ours 6n, Dramatiq 4n, prefork/4 n), so none is start-up bound.
    """
    from common.celery_app import current_app
    from common.models import Doctor
    from contracts import sync

    cores = os.cpu_count() or 1
    Doctor.objects.all().delete()
    Doctor.objects.bulk_create(
        Doctor(first_name="B", last_name=f"Io{i}", email=f"io{i}@bench.example") for i in range(6 * n)
    )
    ids = list(Doctor.objects.order_by("pk").values_list("pk", flat=True))
    crm.latency = 0.1
    app = current_app()
    ours, usual = f"ours ({cores} x sync defaults)", "usual (prefork/4)"
    setups: dict[str, tuple[list[tuple[str, str, list[str]]], int]] = {
        ours: ([("sync.worker", f"io{k}", []) for k in range(cores)], 6 * n),
        usual: ([("sync.worker", "io", ["--pool=prefork", "--concurrency=4"])], n),
    }
    peer = f"dramatiq ({PROCESSES}x{THREADS} threads)"
    runs: dict[str, list[float]] = {k: [] for k in (*setups, peer)}
    for r in range(bench.rounds):
        for name in list(runs) if r % 2 == 0 else list(reversed(runs)):
            if name == peer:
                _, rate = bench.dramatiq.drain("dramatiq-io", "io_get", 4 * n, f"{crm.url}/health")
                runs[name].append(rate)
                continue
            workers, size = setups[name]
            results = [sync.sync_doctor_to_external_system.delay(i) for i in ids[:size]]
            rate, procs = bench.timed_drain("io", app, "sync", workers, [res.id for res in results])
            runs[name].append(rate)
            for proc, _ in procs:
                proc.stop()
            if any(res.get(timeout=60)["status"] != "synced" for res in results):
                raise BenchError(f"{name}: an I/O task failed")
    if bench.profile:  # where a sync worker's time goes: an extra round, not counted
        workers, size = setups[ours]
        bench.profile_round(
            "io",
            app,
            "sync",
            workers,
            lambda: [sync.sync_doctor_to_external_system.delay(i).id for i in ids[:size]],
        )
    crm.latency = 0.0
    for name, rates in runs.items():
        log(f"  {name}: {summary(rates)} tasks/s")
    ratio = statistics.median(runs[ours]) / statistics.median(runs[usual])
    measure = (
        f"I/O-bound 100 ms calls, {bench.database}: {ours} vs {usual} (tasks/s, n={6 * n}/{n}/{4 * n})"
    )
    bench.rows.append((measure, summary(runs[ours]), summary(runs[usual]), f"{ratio:.2f}", ">= 15"))
    bench.peer[measure] = (
        summary(runs[peer]),
        f"{statistics.median(runs[ours]) / statistics.median(runs[peer]):.2f}",
    )

"""Row 2: round-trip latency, `delay(1).get()` one at a time."""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack

from bench.harness import Bench, BenchError


def run(bench: Bench, n: int) -> None:
    """`n` sequential round trips per round: ours and stock `delay(1).get()`, Dramatiq
    `echo.send(1)` then `get_result(block=True)` (its Results middleware, Redis backend)
    from its driver process; Dramatiq's workers are its CLI's default, 2 processes x 8 threads.
    """
    import bench.stock as stock
    from common.celery_app import current_app
    from contracts import sync

    runs: dict[str, list[float]] = {"ours": [], "stock": [], "dramatiq": []}
    procs = {
        "ours": bench.start("ours-lat", "sync.worker", ["--pool=threads", "--concurrency=16"]),
        "stock": bench.start("stock-lat", "bench.stock", ["--pool=threads", "--concurrency=16"]),
    }
    with ExitStack() as stack:
        for p in procs.values():
            stack.callback(p.stop)
        bench.dramatiq.flush()
        stack.enter_context(bench.dramatiq.workers("lat"))
        bench.wait_up(current_app(), "sync", procs["ours"])
        bench.wait_up(stock.app, "stock", procs["stock"])
        send = {"ours": lambda: sync.echo.delay(1), "stock": lambda: stock.echo.delay(1)}
        for name in send:  # the first get() subscribes to results: not a round trip to measure
            send[name]().get(timeout=30)
        for r in range(bench.rounds):
            for name in list(runs) if r % 2 == 0 else list(reversed(runs)):
                if name == "dramatiq":  # a warm-up round trip first, as above
                    runs[name] += bench.dramatiq.driver("latency", str(n), timeout=60 + n)["ms"]
                    continue
                for _ in range(n):
                    t0 = time.perf_counter()
                    if send[name]().get(timeout=30) != 1:
                        raise BenchError(f"{name}: wrong echo")
                    runs[name].append((time.perf_counter() - t0) * 1000)
    for q, label in ((50, "p50"), (95, "p95"), (99, "p99")):
        ours, base, peer = (statistics.quantiles(runs[name], n=100)[q - 1] for name in runs)
        measure = f"delay->get {label} (ms, n={n}x{bench.rounds}; Dramatiq send->get_result)"
        bench.rows.append((measure, f"{ours:.2f}", f"{base:.2f}", f"{ours / base:.2f}", "<= 1.05"))
        bench.peer[measure] = (f"{peer:.2f}", f"{ours / peer:.2f}")

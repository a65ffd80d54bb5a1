"""Row 1: no-op throughput, enqueue and drain, ours against stock Celery; Redis commands per task."""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from typing import Any

from bench.harness import Bench, BenchError, summary, transport_of


def run(bench: Bench, n: int) -> None:
    """`n` tasks per variant, sent in alternating rounds of n/rounds (at least 4 rounds).

    12,000 no-ops at several hundred per second take a minute per variant: split into
    alternating rounds they give medians and spread at the cost of one pass.
    """
    import bench.stock as stock
    from common.celery_app import current_app
    from contracts import sync

    results: dict[str, dict[str, list[float]]] = {
        "ours": {"enqueue": [], "drain": []},
        "stock": {"enqueue": [], "drain": []},
    }
    variants: dict[str, dict[str, Any]] = {
        "ours": {
            "module": "sync.worker",
            "app": current_app(),
            "queue": "sync",
            "task": "sync.echo",
            "send": lambda i: sync.echo.delay(i),
        },
        "stock": {
            "module": "bench.stock",
            "app": stock.app,
            "queue": "stock",
            "task": "stock.echo",
            "send": lambda i: stock.echo.delay(i),
        },
    }
    stock.check_transport()
    ours = "common.transport.broker.transport"
    if transport_of(current_app()) != ours:
        raise BenchError(f"our app runs on {transport_of(current_app())}, not {ours}")
    counted: dict[str, dict[str, Counter[str]]] = {
        name: {"enqueue": Counter(), "drain": Counter()} for name in variants
    }
    tasks = Counter[str]()
    rounds = max(4, bench.rounds)
    # With --profile, an extra round -1 runs under py-spy and is left out of the figures.
    for r in range(-1 if bench.profile else 0, rounds):
        size = n // rounds if r >= 0 else max(n // rounds, 4000)  # enough samples to profile
        for name in ("ours", "stock") if r % 2 == 0 else ("stock", "ours"):
            rates = results[name] if r >= 0 else {"enqueue": [], "drain": []}
            # Redis commands are counted in the measured rounds (counting costs nothing).
            counts = counted[name] if r >= 0 else {"enqueue": Counter(), "drain": Counter()}
            if r >= 0:
                tasks[name] += size
            one_round(bench, name, variants[name], size, r < 0, rates, counts)
    add_rows(bench, n, rounds, results, counted, tasks)


def one_round(
    bench: Bench,
    name: str,
    v: dict[str, Any],
    size: int,
    profiled: bool,
    rates: dict[str, list[float]],
    counts: dict[str, Counter[str]],
) -> None:
    """Enqueue `size` no-ops, drain them with a fresh worker; check each ran exactly once."""
    bench.reset_commandstats()
    with bench.profiling(f"{name}-enqueue (producer)", os.getpid(), enabled=profiled):
        t0 = time.perf_counter()
        ids = [v["send"](i).id for i in range(size)]
        rates["enqueue"].append(size / (time.perf_counter() - t0))
    counts["enqueue"].update(bench.commandstats())
    drained: Counter[str] = Counter()
    rate, [(proc, node)] = bench.timed_drain(
        name,
        v["app"],
        v["queue"],
        [(v["module"], f"{name}-noop", ["--pool=threads", "--concurrency=16"])],
        ids,
        profile=profiled,
        commands=drained,
    )
    counts["drain"].update(drained)
    rates["drain"].append(rate)
    # Exactly once: every task has its SUCCESS (timed_drain), and each message was
    # delivered once: one HSET per delivery, into kombu's `unacked` or our in-flight
    # hash. The worker's own count (`inspect stats`) can only fall short: the threads
    # pool updates it from 16 threads without a lock, and lost one in 5,000 once.
    # Our worker also writes one HSET when it starts consuming: the queue it
    # consumes, in `jobs.consumers` (common.transport.broker.ownership).
    deliveries = drained["hset"] - (1 if name == "ours" else 0)
    done = bench.processed(v["app"], node, v["task"])
    proc.stop()
    if deliveries != size or done > size:
        raise BenchError(
            f"{name}: {deliveries} deliveries, {done} executions for {size} tasks (must be exactly once)"
        )


def add_rows(
    bench: Bench,
    n: int,
    rounds: int,
    results: dict[str, dict[str, list[float]]],
    counted: dict[str, dict[str, Counter[str]]],
    tasks: Counter[str],
) -> None:
    """The enqueue and drain rows, and the row of Redis commands per task (Dramatiq's cell is
    filled from the box row, bench/results.py)."""
    for metric in ("enqueue", "drain"):
        ours, base = results["ours"][metric], results["stock"][metric]
        ratio = statistics.median(ours) / statistics.median(base)
        bench.rows.append(
            (
                f"no-op {metric} (tasks/s, n={n} in {rounds} rounds)",
                summary(ours),
                summary(base),
                f"{ratio:.2f}",
                ">= 0.95",
            )
        )
    per_task = {
        name: {phase: sum(c.values()) / tasks[name] for phase, c in phases.items()}
        for name, phases in counted.items()
    }
    ours_total, stock_total = (sum(per_task[name].values()) for name in ("ours", "stock"))
    bench.rows.append(
        (
            "Redis commands per no-op task, enqueue + drain (inside Lua counted too)",
            f"{per_task['ours']['enqueue']:.1f} + {per_task['ours']['drain']:.1f} = {ours_total:.1f}",
            f"{per_task['stock']['enqueue']:.1f} + {per_task['stock']['drain']:.1f} = {stock_total:.1f}",
            f"{ours_total / stock_total:.2f}",
            "-",
        )
    )
    for name, phases in counted.items():
        bench.commands[name] = {phase: (c, tasks[name]) for phase, c in phases.items()}

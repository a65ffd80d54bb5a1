"""Row 1b: no-op drain per box, every core on one queue: our tuning, stock defaults, Dramatiq's."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from typing import Any

from bench.dramatiq_baseline import PROCESSES, THREADS
from bench.harness import Bench, BenchError, log, summary


def run(bench: Bench, n: int) -> None:
    """Every core of the box on one no-op queue: our tuning vs `celery worker` defaults and
    Dramatiq's.

    Ours runs one single-threaded worker process per core (no GIL shared between the
    consumer and the tasks), prefetching 4; stock runs one default worker (prefork, one
    child per core, prefetch 1); Dramatiq its CLI's default, 2 processes x 8 threads,
    without results (its default) and with its Results middleware (ours stores results).
    Dramatiq's Redis commands per task are counted here (ours and stock's in the no-op
    step).
    """
    import bench.stock as stock
    from common.celery_app import current_app

    cores = os.cpu_count() or 1
    variants: dict[str, dict[str, Any]] = {
        "ours": {
            "app": current_app(),
            "queue": "sync",
            "task": "sync.echo",
            "workers": [
                ("sync.worker", f"box{k}", ["--pool=solo", "--prefetch-multiplier=4"]) for k in range(cores)
            ],
        },
        "stock": {
            "app": stock.app,
            "queue": "stock",
            "task": "stock.echo",
            "workers": [("bench.stock", "box-stock", [])],
        },
    }
    peers = {"dramatiq": "noop", "dramatiq+results": "echo"}  # the actor each variant runs
    rates: dict[str, list[float]] = {k: [] for k in (*variants, *peers)}
    counted = {name: {"enqueue": Counter[str](), "drain": Counter[str]()} for name in peers}
    for r in range(bench.rounds):
        for name in list(rates) if r % 2 == 0 else list(reversed(rates)):
            if name in peers:
                _, rate = bench.dramatiq.drain(
                    name,
                    peers[name],
                    n,
                    counted=counted[name],
                    reset=bench.reset_commandstats,
                    commandstats=bench.commandstats,
                )
                rates[name].append(rate)
                continue
            box_round(bench, name, variants[name], n, rates[name])
    if bench.profile:  # where a solo worker's time goes: an extra round, not counted
        v = variants["ours"]
        bench.profile_round(
            "box",
            v["app"],
            v["queue"],
            v["workers"],
            lambda: [v["app"].send_task(v["task"], args=[i]).id for i in range(n)],
        )
    for name, values in rates.items():
        log(f"  {name}: {summary(values)} tasks/s")
    ours = statistics.median(rates["ours"])
    ratio = ours / statistics.median(rates["stock"])
    measure = (
        f"no-op drain per {cores}-core box: {cores}x solo/prefetch 4 vs stock default worker "
        f"vs Dramatiq {PROCESSES}x{THREADS} threads, results off (tasks/s, n={n})"
    )
    bench.rows.append((measure, summary(rates["ours"]), summary(rates["stock"]), f"{ratio:.2f}", ">= 3"))
    bench.peer[measure] = (
        summary(rates["dramatiq"]),
        f"{ours / statistics.median(rates['dramatiq']):.2f}",
    )
    measure = "no-op drain per box, Dramatiq storing results (Results middleware, Redis backend)"
    bench.rows.append((measure, summary(rates["ours"]), "-", "-", "-"))
    bench.peer[measure] = (
        summary(rates["dramatiq+results"]),
        f"{ours / statistics.median(rates['dramatiq+results']):.2f}",
    )
    tasks = n * bench.rounds
    for name, phases in counted.items():
        bench.commands[name] = {phase: (c, tasks) for phase, c in phases.items()}


def box_round(
    bench: Bench, name: str, v: dict[str, Any], n: int, rates: list[float], profile: bool = False
) -> None:
    app = v["app"]
    # Filled in pipelined batches: only the drain is measured here.
    with app.producer_or_acquire() as producer, producer.batch():
        ids = [app.send_task(v["task"], args=[i], producer=producer).id for i in range(n)]
    label = "box" if profile else name
    rate, workers = bench.timed_drain(label, app, v["queue"], v["workers"], ids, profile=profile)
    rates.append(rate)
    done = sum(bench.processed(app, node, v["task"]) for _, node in workers)
    for proc, _ in workers:
        proc.stop()
    if done != n:
        raise BenchError(f"{name}: {done} executions for {n} tasks (must be exactly once)")

"""Benchmark: our platform against stock Celery and Dramatiq, side by side on one Redis, in one run.

    python -m bench.run            # full (under 10 minutes)
    python -m bench.run --quick    # smoke run

Ours and the baselines alternate over several rounds; the table reports medians, spread
(min-max) and ratios, since absolute numbers vary between machines. Dramatiq runs from the
bench's own virtualenv (made by ./scripts/bench; see bench/dramatiq_baseline.py). Correctness
is checked as we go (every task executed exactly once, the chord result complete); a failure
aborts loudly.
"""

# The entry point only: the arguments and the rows picked. The harness is bench/harness.py,
# each row a module of bench/rows/, the output bench/results.py, the baselines bench/stock.py
# (stock Celery) and bench/dramatiq_baseline.py with bench/dramatiq_peer.py (Dramatiq).

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import harness, results
from bench.harness import log
from bench.rows import (
    box,
    bulk_enqueue,
    capacity,
    chord,
    io_bound,
    latency,
    memory,
    noop,
    recovery,
    report,
    unique_enqueue,
)

ROOT = Path(__file__).resolve().parents[1]

QUICK = {
    "noop": 2000,
    "box": 2000,
    "latency": 50,
    "io": 60,
    "chord": 100,
    "bulk": 500,
    "unique": 500,
    "report": 20_000,
    "memory": 500,
    "capacity": 2000,
}
FULL = {
    "noop": 12_000,
    "box": 3_000,
    "latency": 500,
    "io": 200,
    "chord": 1000,
    "bulk": 5000,
    "unique": 5000,
    "report": 1_000_000,  # >= 5 s a run: +-2% must be measurable
    "memory": 2000,
    "capacity": 5000,
}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated steps to run "
        "(noop,box,latency,io,recovery,chord,bulk,unique,report,memory,capacity)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample producer and worker with py-spy during the first no-op round; "
        "print (and record in RESULTS.md) where the time goes",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument(
        "--dramatiq-venv",
        type=Path,
        default=Path(os.environ.get("BENCH_DRAMATIQ_VENV") or ROOT / "dist" / "bench-venv"),
        help="the virtualenv with Dramatiq for the second baseline (./scripts/bench makes it)",
    )
    return parser


def steps(
    p: harness.Platform, sizes: dict[str, int], quick: bool
) -> list[tuple[str, str, Callable[[], None]]]:
    """Every row, in the order it runs: (key for --only, title, the step)."""
    bench, crm = p.bench, p.crm
    return [
        ("noop", "no-op throughput", lambda: noop.run(bench, sizes["noop"])),
        ("box", "no-op drain per box", lambda: box.run(bench, sizes["box"])),
        ("latency", "round-trip latency", lambda: latency.run(bench, sizes["latency"])),
        ("io", "I/O-bound queue", lambda: io_bound.run(bench, sizes["io"], crm)),
        ("recovery", "recovery after SIGKILL", lambda: recovery.run(bench, crm, with_stock=not quick)),
        ("chord", "chord", lambda: chord.run(bench, sizes["chord"])),
        ("bulk", "bulk enqueue", lambda: bulk_enqueue.run(bench, sizes["bulk"])),
        ("unique", "unique enqueue", lambda: unique_enqueue.run(bench, sizes["unique"])),
        ("report", "report progress", lambda: report.run(bench, sizes["report"])),
        ("memory", "worker memory", lambda: memory.run(bench, sizes["memory"])),
        ("capacity", "Redis cost per task", lambda: capacity.run(bench, sizes["capacity"])),
    ]


def main(argv: list[str] | None = None) -> int:
    parse = parser()
    args = parse.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = QUICK if args.quick else FULL
    if args.profile and not shutil.which("py-spy"):
        parse.error("--profile needs py-spy on PATH (pip install py-spy)")
    only = set(filter(None, args.only.split(",")))

    data_dir = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    started = time.perf_counter()
    with harness.platform(data_dir, rounds, args.profile, args.dramatiq_venv) as p:
        picked = steps(p, sizes, args.quick)
        if only - {key for key, _, _ in picked}:
            parse.error(f"--only: unknown step(s) {sorted(only - {key for key, _, _ in picked})}")
        harness.run_steps(picked, only)
        results.commands_row(p.bench)

    elapsed = time.perf_counter() - started
    texts = results.report(p.bench, p.dramatiq.version)
    if not args.quick and not only:
        results.write(args.results, p.bench, texts, rounds, elapsed, sizes["capacity"])
        log(f"wrote {args.results}")
    shutil.rmtree(data_dir, ignore_errors=True)  # worker logs are kept only when a step failed
    log(f"done in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

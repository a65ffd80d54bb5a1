"""The bench's output: the table it prints and RESULTS.md, with the Redis commands per task."""

from __future__ import annotations

import os
import platform
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.dramatiq_baseline import DB, PROCESSES, THREADS
from bench.harness import Bench


def commands_row(bench: Bench) -> None:
    """Dramatiq's cell in the row of Redis commands per no-op task (counted in the box step)."""
    if "dramatiq" not in bench.commands:
        return
    measure = "Redis commands per no-op task, enqueue + drain (inside Lua counted too)"
    per_task = {
        name: {phase: sum(c.values()) / tasks for phase, (c, tasks) in phases.items()}
        for name, phases in bench.commands.items()
    }
    if "ours" not in per_task:  # --only box: no row of ours to put it in
        bench.rows.append((measure, "-", "-", "-", "-"))
    cells, ratios = [], []
    for name, label in (("dramatiq", ""), ("dramatiq+results", "results on: ")):
        enqueue, drain = per_task[name]["enqueue"], per_task[name]["drain"]
        cells.append(f"{label}{enqueue:.1f} + {drain:.1f} = {enqueue + drain:.1f}")
        if "ours" in per_task:
            ratios.append(f"{label}{sum(per_task['ours'].values()) / (enqueue + drain):.2f}")
    bench.peer[measure] = (f"{cells[0]} ({cells[1]})", f"{ratios[0]} ({ratios[1]})" if ratios else "-")


def commands_table(bench: Bench, top: int = 16) -> str:
    """Redis calls per no-op task by command, the costliest first (the counted rounds)."""
    if not bench.commands:
        return ""
    columns = [(name, phase) for name in bench.commands for phase in ("enqueue", "drain")]
    per_task = {
        column: {cmd: calls / bench.commands[column[0]][column[1]][1] for cmd, calls in c.items()}
        for column in columns
        for c in [bench.commands[column[0]][column[1]][0]]
    }
    overall: Counter[str] = Counter()
    for calls in per_task.values():
        for cmd, n in calls.items():
            overall[cmd] += n  # type: ignore[assignment]
    lines = [
        "| command | " + " | ".join(f"{name} {phase}" for name, phase in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    shown = [cmd for cmd, _ in overall.most_common(top)]
    for cmd in shown:
        lines.append(f"| {cmd} | " + " | ".join(f"{per_task[col].get(cmd, 0):.2f}" for col in columns) + " |")
    rest = [sum(n for cmd, n in per_task[col].items() if cmd not in shown) for col in columns]
    if any(rest):
        lines.append("| (others) | " + " | ".join(f"{n:.2f}" for n in rest) + " |")
    lines.append(
        "| **total** | " + " | ".join(f"{sum(per_task[col].values()):.2f}" for col in columns) + " |"
    )
    return "\n".join(lines)


def table(bench: Bench, dramatiq_version: str) -> str:
    """The rows in Markdown, Dramatiq's cells beside ours and the baseline's."""
    header = (
        "measure",
        "ours (median, min-max)",
        "baseline",
        "ours/baseline",
        f"Dramatiq {dramatiq_version}",
        "ours/Dramatiq",
        "target",
    )
    rows = [(*row[:4], *bench.peer.get(row[0], ("-", "-")), row[4]) for row in bench.rows]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def report(bench: Bench, dramatiq_version: str) -> tuple[str, str, str]:
    """Print the table, the commands per task and the profiles; return the three texts."""
    rows = table(bench, dramatiq_version)
    print(rows)
    commands = commands_table(bench)
    if commands:
        print(f"\nRedis commands per no-op task (INFO commandstats):\n{commands}")
    profiles = "".join(f"\n### {label}\n\n```\n{text}\n```\n" for label, text in bench.profiles.items())
    if profiles:
        print(profiles)
    return rows, commands, profiles


def write(
    path: Path, bench: Bench, texts: tuple[str, str, str], rounds: int, elapsed: float, capacity_n: int
) -> None:
    """RESULTS.md of a full run."""
    table_text, commands, profiles = texts
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    path.write_text(
        f"# Benchmark results\n\n{stamp} on {machine}; full run, {rounds} rounds, {elapsed:.0f} s"
        f"{' (with the extra profiled round)' if profiles else ''}.\n"
        "Written by `./scripts/bench`; what each row compares is in docs/benchmark.md. The"
        " baseline is stock Celery on kombu's transport (the I/O row: the usual prefork/4 worker, the"
        " report row: progress off); Dramatiq runs from the bench's own virtualenv, its CLI's"
        f" defaults ({PROCESSES} processes x {THREADS} threads) on Redis DB {DB}. Where a row misses"
        " its target, docs/benchmark.md (Where the targets stand) says why, from the profiles"
        " at the end.\n\n"
        + table_text
        + "\n"
        + (
            "\n## Redis commands per no-op task\n\n"
            "`INFO commandstats` on the bench's redis-server over the counted no-op rounds (Dramatiq's:"
            " over its no-op drain per box rounds, with and without results; reset before"
            " each enqueue and each drain; the drain from every worker up to an empty queue, heartbeats"
            " included), divided by the tasks, the bench's own polling left out. Redis counts each"
            " command a Lua script runs as well as the `evalsha` that ran it: ours takes a message,"
            " renews its lease and stores a result in one round trip each.\n\n" + commands + "\n"
            if commands
            else ""
        )
        + (
            "\n## What one no-op task costs Redis\n\nOne `--pool=solo` sync worker draining"
            f" {capacity_n:,} no-op tasks (`INFO` after `CONFIG RESETSTAT`; docs/benchmark.md's"
            " capacity model is built on these).\n\n| per no-op task | |\n|---|---|\n"
            + "\n".join(bench.capacity_lines)
            + "\n"
            if bench.capacity_lines
            else ""
        )
        + (f"\n## Where the time goes (py-spy --gil, unmeasured round)\n{profiles}" if profiles else "")
    )

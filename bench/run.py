"""Benchmark: our platform against stock Celery, side by side on one Redis, in one run.

    python -m bench.run            # full (under 10 minutes)
    python -m bench.run --quick    # smoke run

A and B alternate over several rounds; the table reports medians, spread (min-max) and
ratios, since absolute numbers vary between machines. Correctness is checked as we go
(every task executed exactly once, the chord result complete); a failure aborts loudly.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


class BenchError(RuntimeError):
    pass


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a prefork pool), in MiB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def summary(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:,.1f} ({min(values):,.1f}-{max(values):,.1f})"


class Bench:
    def __init__(self, quick: bool, rounds: int, stack: ExitStack, data_dir: Path) -> None:
        self.quick = quick
        self.rounds = rounds
        self.stack = stack
        self.data_dir = data_dir
        self.rows: list[tuple[str, str, str, str]] = []

    # --- processes -------------------------------------------------------------
    def start(self, name: str, module: str, args: list[str] | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        from common.processes import ServiceProcess

        proc = ServiceProcess(
            name,
            module,
            ["--without-mingle", "--without-gossip", "--loglevel=WARNING", *(args or [])],
            env={"DJANGO_SETTINGS_MODULE": "common.django_settings", **(env or {})},
            log=self.data_dir / f"{name}.log",
        ).start()
        return proc

    def wait_up(self, app, node_prefix: str, proc) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 90
        while True:
            for reply in app.control.ping(timeout=0.5) or []:
                for node in reply:
                    if node.startswith(node_prefix + "@"):
                        return node
            if not proc.running or time.monotonic() > deadline:
                raise BenchError(f"{node_prefix} worker did not start; see {self.data_dir}")

    def processed(self, app, node: str, task: str) -> int:  # type: ignore[no-untyped-def]
        stats = app.control.inspect(destination=[node], timeout=5).stats() or {}
        return int(stats.get(node, {}).get("total", {}).get(task, 0))

    # --- 1. no-op throughput --------------------------------------------------
    def throughput(self, n: int) -> None:
        import bench.stock as stock
        from common import catalogue
        from common.celery_app import current_app

        ours_app = current_app()
        results: dict[str, dict[str, list[float]]] = {
            "ours": {"enqueue": [], "drain": []},
            "stock": {"enqueue": [], "drain": []},
        }
        variants: dict[str, dict[str, Any]] = {
            "ours": {
                "module": "sync.worker",
                "prefix": "sync",
                "queue": "sync",
                "app": ours_app,
                "task": "sync.echo",
                "send": lambda i: catalogue.echo.delay(i),
            },
            "stock": {
                "module": "bench.stock",
                "prefix": "stock",
                "queue": "stock",
                "app": stock.app,
                "task": "stock.echo",
                "send": lambda i: stock.echo.delay(i),
            },
        }
        for r in range(self.rounds):
            for name in ("ours", "stock") if r % 2 == 0 else ("stock", "ours"):
                v = variants[name]
                proc = self.start(f"{name}-noop", v["module"], ["--pool=threads", "--concurrency=16"])
                node = self.wait_up(v["app"], v["prefix"], proc)
                v["app"].control.cancel_consumer(v["queue"], destination=[node], reply=True)
                t0 = time.perf_counter()
                for i in range(n):
                    v["send"](i)
                results[name]["enqueue"].append(n / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                v["app"].control.add_consumer(v["queue"], destination=[node], reply=True)
                deadline = time.monotonic() + 600
                while self.processed(v["app"], node, v["task"]) < n:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{name}: drain did not finish")
                    time.sleep(0.1)
                results[name]["drain"].append(n / (time.perf_counter() - t0))
                done = self.processed(v["app"], node, v["task"])
                if done != n:
                    raise BenchError(f"{name}: {done} executions for {n} tasks (must be exactly once)")
                proc.stop()
        for metric in ("enqueue", "drain"):
            ours, base = results["ours"][metric], results["stock"][metric]
            ratio = statistics.median(ours) / statistics.median(base)
            self.rows.append(
                (f"no-op {metric} (tasks/s, n={n})", summary(ours), summary(base), f"{ratio:.2f}")
            )

    # --- 2. round-trip latency -------------------------------------------------
    def latency(self, n: int) -> None:
        import bench.stock as stock
        from common import catalogue
        from common.celery_app import current_app

        runs: dict[str, list[float]] = {"ours": [], "stock": []}
        procs = {
            "ours": self.start("ours-lat", "sync.worker", ["--pool=threads", "--concurrency=16"]),
            "stock": self.start("stock-lat", "bench.stock", ["--pool=threads", "--concurrency=16"]),
        }
        self.wait_up(current_app(), "sync", procs["ours"])
        self.wait_up(stock.app, "stock", procs["stock"])
        send = {"ours": lambda: catalogue.echo.delay(1), "stock": lambda: stock.echo.delay(1)}
        for r in range(self.rounds):
            for name in ("ours", "stock") if r % 2 == 0 else ("stock", "ours"):
                for _ in range(n):
                    t0 = time.perf_counter()
                    if send[name]().get(timeout=30) != 1:
                        raise BenchError(f"{name}: wrong echo")
                    runs[name].append((time.perf_counter() - t0) * 1000)
        for p in procs.values():
            p.stop()
        for q, label in ((50, "p50"), (99, "p99")):
            ours = statistics.quantiles(runs["ours"], n=100)[q - 1]
            base = statistics.quantiles(runs["stock"], n=100)[q - 1]
            self.rows.append(
                (
                    f"delay->get {label} (ms, n={n}x{self.rounds})",
                    f"{ours:.2f}",
                    f"{base:.2f}",
                    f"{ours / base:.2f}",
                )
            )

    # --- 3. I/O-bound queue ----------------------------------------------------
    def io_bound(self, n: int, crm) -> None:  # type: ignore[no-untyped-def]
        from common import catalogue
        from common.celery_app import current_app
        from common.models import Doctor

        Doctor.objects.all().delete()
        ids = [
            Doctor.objects.create(first_name="B", last_name=f"Io{i}", email=f"io{i}@bench.example").pk
            for i in range(n)
        ]
        crm.latency = 0.1
        setups = {"default (threads/16)": [], "chapter (prefork/4)": ["--pool=prefork", "--concurrency=4"]}
        runs: dict[str, list[float]] = {k: [] for k in setups}
        for r in range(self.rounds):
            for name in list(setups) if r % 2 == 0 else list(reversed(setups)):
                proc = self.start("io", "sync.worker", setups[name])
                self.wait_up(current_app(), "sync", proc)
                t0 = time.perf_counter()
                results = [catalogue.sync_doctor_to_external_system.delay(i) for i in ids]
                for res in results:
                    if res.get(timeout=300)["status"] != "synced":
                        raise BenchError("I/O task failed")
                runs[name].append(n / (time.perf_counter() - t0))
                proc.stop()
        crm.latency = 0.0
        ours, base = runs["default (threads/16)"], runs["chapter (prefork/4)"]
        ratio = statistics.median(ours) / statistics.median(base)
        self.rows.append(
            (f"I/O-bound 100 ms calls (tasks/s, n={n})", summary(ours), summary(base), f"{ratio:.2f}")
        )

    # --- 4. chord --------------------------------------------------------------
    def chord(self, n: int) -> None:
        from celery import chord

        from common import catalogue
        from common.celery_app import current_app

        procs = [self.start("chord-sync", "sync.worker"), self.start("chord-emails", "emails.worker")]
        self.wait_up(current_app(), "sync", procs[0])
        self.wait_up(current_app(), "emails", procs[1])
        times = []
        for _ in range(self.rounds):
            t0 = time.perf_counter()
            out = chord((catalogue.echo.s(i) for i in range(n)), catalogue.notify_admin.s()).apply_async()
            result = out.get(timeout=300)
            times.append(time.perf_counter() - t0)
            if result["items"] != n:
                raise BenchError(f"chord callback saw {result['items']} of {n} results")
        for p in procs:
            p.stop()
        self.rows.append((f"chord of {n} echo -> notify_admin (s)", summary(times), "-", "-"))

    # --- 5. report progress overhead --------------------------------------------
    def progress(self, n: int) -> None:
        from decimal import Decimal

        from common import catalogue
        from common.celery_app import current_app
        from common.models import Report, ReportItem

        report = Report.objects.create(name="bench")
        ReportItem.objects.bulk_create(
            (ReportItem(report=report, label=f"i{i}", value=Decimal(i % 7)) for i in range(n)),
            batch_size=5000,
        )
        setups = {"on (0.5 s)": "0.5", "off": "1000000"}
        runs: dict[str, list[float]] = {k: [] for k in setups}
        for r in range(self.rounds):
            for name in list(setups) if r % 2 == 0 else list(reversed(setups)):
                proc = self.start("reports", "reports.worker", env={"REPORT_PROGRESS_INTERVAL": setups[name]})
                self.wait_up(current_app(), "reports", proc)
                t0 = time.perf_counter()
                out = catalogue.generate_large_report.delay(report.pk).get(timeout=600)
                runs[name].append(time.perf_counter() - t0)
                if out["processed"] != n:
                    raise BenchError("report incomplete")
                proc.stop()
        on, off = statistics.median(runs["on (0.5 s)"]), statistics.median(runs["off"])
        self.rows.append(
            (
                f"report of {n:,} items, progress on/off (s)",
                summary(runs["on (0.5 s)"]),
                summary(runs["off"]),
                f"{on / off:.3f} ({100 * (on - off) / off:+.1f}%)",
            )
        )

    # --- 6. memory ---------------------------------------------------------------
    def memory_per_service(self, n: int) -> None:
        from common import catalogue
        from common.catalogue import SERVICES
        from common.celery_app import current_app

        procs = {s: self.start(f"mem-{s}", f"{s}.worker") for s in SERVICES}
        for s, p in procs.items():
            self.wait_up(current_app(), s, p)
        time.sleep(2)
        at_rest = {s: rss_mb(p.proc.pid) for s, p in procs.items()}
        results = [catalogue.echo.delay(i) for i in range(n)]
        for res in results:
            res.get(timeout=120)
        after = {s: rss_mb(p.proc.pid) for s, p in procs.items()}
        for s, p in procs.items():
            p.stop()
            self.rows.append(
                (f"RSS {s} worker at rest / after (MiB)", f"{at_rest[s]:.0f} / {after[s]:.0f}", "-", "-")
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = (
        {"noop": 2000, "latency": 50, "io": 40, "chord": 100, "report": 20_000, "memory": 500}
        if args.quick
        else {"noop": 20_000, "latency": 500, "io": 200, "chord": 1000, "report": 100_000, "memory": 5000}
    )

    data_dir = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    started = time.perf_counter()
    with ExitStack() as stack:
        from common.local_redis import LocalRedis
        from common.sandboxes.crm import CRMSandbox
        from common.sandboxes.smtp import SMTPSink

        redis = stack.enter_context(LocalRedis())
        smtp = stack.enter_context(SMTPSink())
        crm = stack.enter_context(CRMSandbox())
        os.environ.update(
            REDIS_URL=redis.url,
            DATA_DIR=str(data_dir),
            EMAIL_HOST=smtp.host,
            EMAIL_PORT=str(smtp.port),
            CRM_URL=crm.url,
            DJANGO_SETTINGS_MODULE="common.django_settings",
            LOG_LEVEL="WARNING",
        )
        os.environ.pop("DATABASE_URL", None)
        os.environ.pop("SENTRY_DSN", None)
        import logging

        logging.getLogger("mail.log").setLevel(logging.WARNING)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)

        bench = Bench(args.quick, rounds, stack, data_dir)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("no-op throughput", lambda: bench.throughput(sizes["noop"])),
            ("round-trip latency", lambda: bench.latency(sizes["latency"])),
            ("I/O-bound queue", lambda: bench.io_bound(sizes["io"], crm)),
            ("chord", lambda: bench.chord(sizes["chord"])),
            ("report progress", lambda: bench.progress(sizes["report"])),
            ("worker memory", lambda: bench.memory_per_service(sizes["memory"])),
        ]
        for title, step in steps:
            log(f"{title}...")
            step()

    elapsed = time.perf_counter() - started
    header = ("measure", "ours (median, min-max)", "baseline", "ours/baseline")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in bench.rows),
    ]
    table = "\n".join(lines)
    print(table)
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick" if args.quick else "full"
    if not args.quick:
        args.results.write_text(
            f"# Benchmark results\n\n{stamp} on {machine}; {mode} run, {rounds} rounds, {elapsed:.0f} s.\n"
            "Baselines: stock Celery (same settings, same Redis, same pool) for no-op and latency; "
            "the chapter's prefork/4 for I/O; progress off for reports.\n\n" + table + "\n"
        )
        log(f"wrote {args.results}")
    log(f"done in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

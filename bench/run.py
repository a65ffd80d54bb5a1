"""Benchmark: our platform against stock Celery and Dramatiq, side by side on one Redis, in one run.

    python -m bench.run            # full (under 10 minutes)
    python -m bench.run --quick    # smoke run

Ours and the baselines alternate over several rounds; the table reports medians, spread
(min-max) and ratios, since absolute numbers vary between machines. Dramatiq runs from the
bench's own virtualenv (made by ./scripts/bench; see bench/dramatiq_baseline.py). Correctness
is checked as we go (every task executed exactly once, the chord result complete); a failure
aborts loudly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.dramatiq_baseline import DB, PROCESSES, THREADS, DramatiqBaseline

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


class BenchError(RuntimeError):
    pass


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far (/proc/<pid>/stat), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


# Frames every sample passes through (interpreter start-up, the worker's main loop, thread
# bootstrap): left out of the inclusive list, which should show where the work is.
PLUMBING = re.compile(
    r"<frozen runpy>|\(threading\.py\)|concurrent/futures|\(click/|celery/bootsteps|celery/bin/|"
    r"\(bench/run\.py\)|^<module> |^main |run_worker|worker_main|Celery\.start|WorkController\.start|"
    r"Consumer\.start|Evloop\.start|asynloop|Hub\.create_loop|apply_target|fast_trace_task|"
    r"build_tracer\.<locals>\.trace_task|Retry\.call_with_retry|retry_over_time|_ensured|"
    r"deprecated_args|promise\.__call__"
)


def profile_summary(raw: Path, top: int = 15) -> str:
    """The costliest functions in a py-spy raw profile: inclusive and self share of samples."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [re.sub(r"\(/\S*/site-packages/", "(", f) for f in frames]
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples", "", "inclusive  self   function"]
    shown = [f for f, _ in inclusive.most_common() if not PLUMBING.search(f)][:top]
    for f in shown:
        lines.append(f"{100 * inclusive[f] / total:6.1f}%  {100 * own[f] / total:5.1f}%  {f}")
    lines += ["", "top self time:"]
    for f, n in own.most_common(top):
        lines.append(f"{100 * n / total:6.1f}%  {f}")
    return "\n".join(lines)


def transport_of(app) -> str:  # type: ignore[no-untyped-def]
    """The module of the kombu transport class `app` publishes with."""
    with app.connection_for_write() as conn:
        return str(conn.transport.__class__.__module__)


def summary(values: list[float], digits: int = 1) -> str:
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


@contextmanager
def bench_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the run where one is reachable, else SQLite; its name.

    The I/O row runs dozens of threads writing at once: on SQLite they queue for its one
    write lock (64 threads measured slower than 16), which is not what production does.
    BENCH_PG_URL names the server's admin database (default: the local one, trust auth).
    """
    import secrets

    admin = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import psycopg

        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            name = f"jobs_bench_{secrets.token_hex(4)}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL here
        log(f"PostgreSQL not reachable at {admin} ({type(exc).__name__}); the bench runs on SQLite")
        os.environ.pop("DATABASE_URL", None)
        yield "SQLite"
        return
    os.environ["DATABASE_URL"] = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield "PostgreSQL"
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Bench:
    database = "SQLite"

    def __init__(
        self, rounds: int, data_dir: Path, redis_url: str, profile: bool, dramatiq: DramatiqBaseline
    ) -> None:
        import redis

        self.rounds = rounds
        self.dramatiq = dramatiq
        self.data_dir = data_dir
        self.redis = redis.Redis.from_url(redis_url)
        self.profile = profile
        # measure, ours, baseline, ours/baseline, target (the issue's; "-" where none)
        self.rows: list[tuple[str, str, str, str, str]] = []
        # measure -> (Dramatiq, ours/Dramatiq), for the rows that have Dramatiq measured alongside
        self.peer: dict[str, tuple[str, str]] = {}
        self.profiles: dict[str, str] = {}
        self.own: Counter[str] = Counter()  # commands the bench itself sent since the reset
        dramatiq.own = self.own  # its polling of Dramatiq's queue too
        # variant -> phase -> (Redis calls per command, tasks)
        self.commands: dict[str, dict[str, tuple[Counter[str], int]]] = {}

    @contextmanager
    def profiling(self, label: str, pid: int, enabled: bool = True) -> Iterator[None]:
        """py-spy samples process `pid` for the duration of the block, with --profile.

        `--gil` samples only the thread holding the GIL: a no-op worker is CPU-bound on one
        core, so that is where its time goes (threads waiting on sockets are not the cost).
        """
        if not (self.profile and enabled):
            yield
            return
        out = self.data_dir / f"profile-{label}.txt"
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--gil",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # attach before the measured work starts
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        if out.exists():
            self.profiles[label] = profile_summary(out)

    # --- processes -------------------------------------------------------------
    def start(self, name: str, module: str, args: list[str] | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        from devtools.platform import platform_process

        args = ["--without-mingle", "--without-gossip", "--loglevel=WARNING", *(args or [])]
        return platform_process(name, module, self.data_dir / f"{name}.log", args, env).start()

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

    def outstanding(self, queue: str) -> int:
        """Messages still queued, delayed, or delivered but unacknowledged, read from Redis.

        Polling Redis instead of broadcasting `inspect` keeps the measurement from loading
        the worker under test (each broadcast is work for its consumer). kombu keeps what it
        delivered in the `unacked` hash; our transport in each worker process's in-flight
        hash (`jobs.inflight:<owner>`), and future ETAs in `jobs.delayed`. Every command
        sent here is counted, to be left out of the Redis commands per task.
        """
        from common.transport.broker import ownership, scripts

        r = self.redis
        inflight = r.keys(scripts.INFLIGHT_PREFIX + "*")
        self.own["keys"] += 1
        pipe = r.pipeline(transaction=False)
        for key in (queue, *(f"{queue}{ownership.SEP}{p}" for p in range(1, 10))):  # priority lists
            pipe.llen(key)
        pipe.hlen("unacked")
        pipe.zcard(scripts.DELAYED)
        for key in inflight:
            pipe.hlen(key)
        for args, _ in pipe.command_stack:
            self.own[str(args[0]).lower()] += 1
        return sum(pipe.execute())

    def owner_pids(self) -> set[int]:
        """Processes heartbeating as owners of in-flight messages: those on our transport."""
        from common.transport.broker import scripts

        return {int(owner.split(b":")[-2]) for owner in self.redis.zrange(scripts.OWNERS, 0, -1)}

    def check_transport(self, name: str, procs: list, ours: bool) -> None:  # type: ignore[type-arg]
        """Ours must run our transport (heartbeats, delayed set, intake); stock kombu's own."""
        owners = self.owner_pids()
        for proc in procs:
            if (proc.proc.pid in owners) != ours:
                on = "kombu's stock transport" if ours else "our transport"
                raise BenchError(f"{name}: worker {proc.name} consumed on {on}")

    # --- Redis commands per task ---------------------------------------------------
    def reset_commandstats(self) -> None:
        self.redis.config_resetstat()
        self.own.clear()

    def commandstats(self) -> Counter[str]:
        """Calls per command since the reset, less the bench's own polling.

        Redis counts the commands a Lua script runs as well as the EVALSHA that ran it.
        """
        calls: Counter[str] = Counter()
        for key, value in self.redis.info("commandstats").items():
            command = key.removeprefix("cmdstat_")
            if not command.startswith(("config", "info")):
                calls[command] = int(value["calls"])
        calls.subtract(self.own)
        return +calls

    def drain(self, name: str, queue: str, procs: list, deadline_s: float = 600) -> None:  # type: ignore[type-arg]
        deadline = time.monotonic() + deadline_s
        while self.outstanding(queue):
            if time.monotonic() > deadline or not all(p.running for p in procs):
                raise BenchError(f"{name}: drain did not finish; see {self.data_dir}")
            time.sleep(0.02)

    def wait_results(self, name: str, task_ids: list[str], procs: list, deadline_s: float = 60) -> None:  # type: ignore[type-arg]
        """Until every task has a result: kombu pops a message before it records it unacked,
        so an empty queue and an empty `unacked` may still hide the last one."""
        deadline = time.monotonic() + deadline_s
        while True:
            found = 0
            for start in range(0, len(task_ids), 1000):
                found += self.redis.exists(*(f"celery-task-meta-{t}" for t in task_ids[start : start + 1000]))
                self.own["exists"] += 1
            if found == len(task_ids):
                return
            if time.monotonic() > deadline or not all(p.running for p in procs):
                raise BenchError(
                    f"{name}: {len(task_ids) - found} tasks never got a result; see {self.data_dir}"
                )
            time.sleep(0.02)

    def start_nodes(self, name: str, app, workers: list[tuple[str, str, list[str]]]):  # type: ignore[no-untyped-def]
        """Start each (module, node, args) worker and wait until every one answers a ping."""
        procs = [
            self.start(f"{name}-{node}", module, [f"--hostname={node}@%h", *args])
            for module, node, args in workers
        ]
        nodes = [self.wait_up(app, node, p) for (_, node, _), p in zip(workers, procs, strict=True)]
        return procs, nodes

    def timed_drain(
        self,
        name: str,
        app,  # type: ignore[no-untyped-def]
        queue: str,
        workers: list[tuple[str, str, list[str]]],
        task_ids: list[str],
        profile: bool = False,
        commands: Counter[str] | None = None,
    ) -> tuple[float, list]:  # type: ignore[type-arg]
        """Start `workers` on a filled queue, wait until it is empty; their execution rate.

        The rate comes from the results' `date_done` (first to last), so worker start-up and
        our polling are left out; a second worker still starting counts against us. Workers
        start after the queue is filled: no cancel/add_consumer dance, which kombu's Redis
        transport does not always survive. `commands` gets the Redis calls made from the
        workers' start until the queue is empty: a worker drains while the bench still
        waits for its ping, so its start-up (and those pings) are counted too.
        """
        if commands is not None:
            self.reset_commandstats()
        procs, nodes = self.start_nodes(name, app, workers)
        with self.profiling(f"{name}-drain (worker)", procs[0].proc.pid, enabled=profile):
            self.drain(name, queue, procs)
        self.wait_results(name, task_ids, procs)
        if commands is not None:
            commands.update(self.commandstats())
        self.check_transport(name, procs, ours=all(module != "bench.stock" for module, _, _ in workers))
        return self.execution_rate(name, task_ids), list(zip(procs, nodes, strict=True))

    def profile_round(
        self,
        name: str,
        app,  # type: ignore[no-untyped-def]
        queue: str,
        workers: list[tuple[str, str, list[str]]],
        send: Callable[[], list[str]],
    ) -> None:
        """An unmeasured round under py-spy: the workers start on an empty queue, so the
        profile of the first one holds its work, not its start-up; then `send` fills it."""
        procs, _ = self.start_nodes(f"{name}-profiled", app, workers)
        label = f"{name}-drain (worker)"
        cpu0, own0 = sum(cpu_seconds(p.proc.pid) for p in procs), time.process_time()
        with self.profiling(label, procs[0].proc.pid):
            task_ids = send()
            self.drain(name, queue, procs)
            self.wait_results(name, task_ids, procs)
        worker_ms = 1000 * (sum(cpu_seconds(p.proc.pid) for p in procs) - cpu0) / len(task_ids)
        bench_ms = 1000 * (time.process_time() - own0) / len(task_ids)
        for proc in procs:
            proc.stop()
        if label in self.profiles:
            self.profiles[label] = (
                f"CPU per task: {worker_ms:.2f} ms in the {len(procs)} worker process(es), "
                f"{bench_ms:.2f} ms in the bench's own (sending, polling, the sandboxes)\n"
                + self.profiles[label]
            )

    def execution_rate(self, name: str, task_ids: list[str]) -> float:
        done = []
        for start in range(0, len(task_ids), 1000):
            keys = [f"celery-task-meta-{t}" for t in task_ids[start : start + 1000]]
            for raw in self.redis.mget(keys):
                meta = json.loads(raw) if raw else {}
                if meta.get("status") != "SUCCESS":
                    raise BenchError(f"{name}: a task ended {meta.get('status') or 'without a result'}")
                done.append(datetime.fromisoformat(meta["date_done"]).timestamp())
        return (len(done) - 1) / (max(done) - min(done))

    # --- 1. no-op throughput --------------------------------------------------
    def throughput(self, n: int) -> None:
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
        rounds = max(4, self.rounds)
        # With --profile, an extra round -1 runs under py-spy and is left out of the figures.
        for r in range(-1 if self.profile else 0, rounds):
            size = n // rounds if r >= 0 else max(n // rounds, 4000)  # enough samples to profile
            for name in ("ours", "stock") if r % 2 == 0 else ("stock", "ours"):
                v = variants[name]
                rates = results[name] if r >= 0 else {"enqueue": [], "drain": []}
                # Redis commands are counted in the measured rounds (counting costs nothing).
                counts = counted[name] if r >= 0 else {"enqueue": Counter(), "drain": Counter()}
                if r >= 0:
                    tasks[name] += size
                self.reset_commandstats()
                with self.profiling(f"{name}-enqueue (producer)", os.getpid(), enabled=r < 0):
                    t0 = time.perf_counter()
                    ids = [v["send"](i).id for i in range(size)]
                    rates["enqueue"].append(size / (time.perf_counter() - t0))
                counts["enqueue"].update(self.commandstats())
                drained: Counter[str] = Counter()
                rate, [(proc, node)] = self.timed_drain(
                    name,
                    v["app"],
                    v["queue"],
                    [(v["module"], f"{name}-noop", ["--pool=threads", "--concurrency=16"])],
                    ids,
                    profile=r < 0,
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
                done = self.processed(v["app"], node, v["task"])
                proc.stop()
                if deliveries != size or done > size:
                    raise BenchError(
                        f"{name}: {deliveries} deliveries, {done} executions for {size} tasks "
                        "(must be exactly once)"
                    )
        for metric in ("enqueue", "drain"):
            ours, base = results["ours"][metric], results["stock"][metric]
            ratio = statistics.median(ours) / statistics.median(base)
            self.rows.append(
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
        self.rows.append(
            (
                "Redis commands per no-op task, enqueue + drain (inside Lua counted too)",
                f"{per_task['ours']['enqueue']:.1f} + {per_task['ours']['drain']:.1f} = {ours_total:.1f}",
                f"{per_task['stock']['enqueue']:.1f} + {per_task['stock']['drain']:.1f} = {stock_total:.1f}",
                f"{ours_total / stock_total:.2f}",
                "-",
            )
        )
        for name, phases in counted.items():
            self.commands[name] = {phase: (c, tasks[name]) for phase, c in phases.items()}

    # --- 1b. drain per box ------------------------------------------------------------
    def box_drain(self, n: int) -> None:
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
                    ("sync.worker", f"box{k}", ["--pool=solo", "--prefetch-multiplier=4"])
                    for k in range(cores)
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
        for r in range(self.rounds):
            for name in list(rates) if r % 2 == 0 else list(reversed(rates)):
                if name in peers:
                    _, rate = self.dramatiq.drain(
                        name,
                        peers[name],
                        n,
                        counted=counted[name],
                        reset=self.reset_commandstats,
                        commandstats=self.commandstats,
                    )
                    rates[name].append(rate)
                    continue
                self.box_round(name, variants[name], n, rates[name])
        if self.profile:  # where a solo worker's time goes: an extra round, not counted
            v = variants["ours"]
            self.profile_round(
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
        self.rows.append((measure, summary(rates["ours"]), summary(rates["stock"]), f"{ratio:.2f}", ">= 3"))
        self.peer[measure] = (
            summary(rates["dramatiq"]),
            f"{ours / statistics.median(rates['dramatiq']):.2f}",
        )
        measure = "no-op drain per box, Dramatiq storing results (Results middleware, Redis backend)"
        self.rows.append((measure, summary(rates["ours"]), "-", "-", "-"))
        self.peer[measure] = (
            summary(rates["dramatiq+results"]),
            f"{ours / statistics.median(rates['dramatiq+results']):.2f}",
        )
        tasks = n * self.rounds
        for name, phases in counted.items():
            self.commands[name] = {phase: (c, tasks) for phase, c in phases.items()}

    def box_round(
        self, name: str, v: dict[str, Any], n: int, rates: list[float], profile: bool = False
    ) -> None:
        app = v["app"]
        # Filled in pipelined batches: only the drain is measured here.
        with app.producer_or_acquire() as producer, producer.batch():
            ids = [app.send_task(v["task"], args=[i], producer=producer).id for i in range(n)]
        label = "box" if profile else name
        rate, workers = self.timed_drain(label, app, v["queue"], v["workers"], ids, profile=profile)
        rates.append(rate)
        done = sum(self.processed(app, node, v["task"]) for _, node in workers)
        for proc, _ in workers:
            proc.stop()
        if done != n:
            raise BenchError(f"{name}: {done} executions for {n} tasks (must be exactly once)")

    # --- 2. round-trip latency -------------------------------------------------
    def latency(self, n: int) -> None:
        """`n` sequential round trips per round: ours and stock `delay(1).get()`, Dramatiq
        `echo.send(1)` then `get_result(block=True)` (its Results middleware, Redis backend)
        from its driver process; Dramatiq's workers are its CLI's default, 2 processes x 8 threads.
        """
        import bench.stock as stock
        from common.celery_app import current_app
        from contracts import sync

        runs: dict[str, list[float]] = {"ours": [], "stock": [], "dramatiq": []}
        procs = {
            "ours": self.start("ours-lat", "sync.worker", ["--pool=threads", "--concurrency=16"]),
            "stock": self.start("stock-lat", "bench.stock", ["--pool=threads", "--concurrency=16"]),
        }
        with ExitStack() as stack:
            for p in procs.values():
                stack.callback(p.stop)
            self.dramatiq.flush()
            stack.enter_context(self.dramatiq.workers("lat"))
            self.wait_up(current_app(), "sync", procs["ours"])
            self.wait_up(stock.app, "stock", procs["stock"])
            send = {"ours": lambda: sync.echo.delay(1), "stock": lambda: stock.echo.delay(1)}
            for name in send:  # the first get() subscribes to results: not a round trip to measure
                send[name]().get(timeout=30)
            for r in range(self.rounds):
                for name in list(runs) if r % 2 == 0 else list(reversed(runs)):
                    if name == "dramatiq":  # a warm-up round trip first, as above
                        runs[name] += self.dramatiq.driver("latency", str(n), timeout=60 + n)["ms"]
                        continue
                    for _ in range(n):
                        t0 = time.perf_counter()
                        if send[name]().get(timeout=30) != 1:
                            raise BenchError(f"{name}: wrong echo")
                        runs[name].append((time.perf_counter() - t0) * 1000)
        for q, label in ((50, "p50"), (95, "p95"), (99, "p99")):
            ours, base, peer = (statistics.quantiles(runs[name], n=100)[q - 1] for name in runs)
            measure = f"delay->get {label} (ms, n={n}x{self.rounds}; Dramatiq send->get_result)"
            self.rows.append((measure, f"{ours:.2f}", f"{base:.2f}", f"{ours / base:.2f}", "<= 1.05"))
            self.peer[measure] = (f"{peer:.2f}", f"{ours / peer:.2f}")

    # --- 3. I/O-bound queue ----------------------------------------------------
    def io_bound(self, n: int, crm) -> None:  # type: ignore[no-untyped-def]
        """Each sync calls the CRM sandbox (100 ms) between an ORM read and update.

        Ours: one sync worker per core on the service's defaults (threads, see
        services/sync/service.py); the chapter: one prefork worker of 4 children; Dramatiq: its
        2 x 8 threads making the same HTTP call. Each runs a batch sized to take a few seconds
        at its expected rate (ours 6n, Dramatiq 4n, the chapter n), so none is start-up bound.
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
        ours, chapter = f"ours ({cores} x sync defaults)", "chapter (prefork/4)"
        setups = {
            ours: ([("sync.worker", f"io{k}", []) for k in range(cores)], 6 * n),
            chapter: ([("sync.worker", "io", ["--pool=prefork", "--concurrency=4"])], n),
        }
        peer = f"dramatiq ({PROCESSES}x{THREADS} threads)"
        runs: dict[str, list[float]] = {k: [] for k in (*setups, peer)}
        for r in range(self.rounds):
            for name in list(runs) if r % 2 == 0 else list(reversed(runs)):
                if name == peer:
                    _, rate = self.dramatiq.drain("dramatiq-io", "io_get", 4 * n, f"{crm.url}/health")
                    runs[name].append(rate)
                    continue
                workers, size = setups[name]
                results = [sync.sync_doctor_to_external_system.delay(i) for i in ids[:size]]
                rate, procs = self.timed_drain("io", app, "sync", workers, [res.id for res in results])
                runs[name].append(rate)
                for proc, _ in procs:
                    proc.stop()
                if any(res.get(timeout=60)["status"] != "synced" for res in results):
                    raise BenchError(f"{name}: an I/O task failed")
        if self.profile:  # where a sync worker's time goes: an extra round, not counted
            workers, size = setups[ours]
            self.profile_round(
                "io",
                app,
                "sync",
                workers,
                lambda: [sync.sync_doctor_to_external_system.delay(i).id for i in ids[:size]],
            )
        crm.latency = 0.0
        for name, rates in runs.items():
            log(f"  {name}: {summary(rates)} tasks/s")
        ratio = statistics.median(runs[ours]) / statistics.median(runs[chapter])
        measure = (
            f"I/O-bound 100 ms calls, {self.database}: {ours} vs {chapter} (tasks/s, n={6 * n}/{n}/{4 * n})"
        )
        self.rows.append((measure, summary(runs[ours]), summary(runs[chapter]), f"{ratio:.2f}", ">= 15"))
        self.peer[measure] = (
            summary(runs[peer]),
            f"{statistics.median(runs[ours]) / statistics.median(runs[peer]):.2f}",
        )

    # --- 3b. recovery after SIGKILL ---------------------------------------------------
    def recovery(self, crm, with_stock: bool, task_s: float = 6.0, stock_wait_s: float = 200.0) -> None:  # type: ignore[no-untyped-def]
        """Seconds from SIGKILL of the worker running a task until a second worker starts it.

        The task is a CRM call made slow by the sandbox's latency (`task_s`), so it is surely
        in flight when its worker's process group is killed; a second worker is running.
        The sandbox's request log (a monotonic `at` per request) says when each delivery
        started. Ours comes back by heartbeats (BROKER_HEARTBEAT_TIMEOUT, default 10 s).
        Stock kombu comes back by message age: `visibility_timeout` 30 s (lower and a slow
        task runs twice), found by the sweep for unacked messages, which with kombu's
        defaults scans every `unacked_restore_interval` x `unacked_restore_throttle`
        (10 x 10 s) from the worker's start. The one stock round waits (up to
        `stock_wait_s`) while ours' rounds run: other queue, other keys.
        """
        import bench.stock as stock
        from common.celery_app import current_app
        from common.models import Doctor
        from contracts import sync

        app = current_app()

        def starts(ref: str) -> list[float]:
            return [
                r["at"]
                for r in crm.requests
                if isinstance(r["body"], dict) and r["body"].get("reference") == ref
            ]

        def start_workers(name: str, module: str, app, ks: range, env: dict[str, str] | None = None) -> list:  # type: ignore[no-untyped-def, type-arg]
            """Workers (threads/4) started together and answering: (process, node name) each."""
            procs = [
                (
                    self.start(
                        f"{name}-rec{k}",
                        module,
                        [f"--hostname={name}-rec{k}@%h", "--pool=threads", "--concurrency=4"],
                        env=env,
                    ),
                    f"{name}-rec{k}",
                )
                for k in ks
            ]
            return [(proc, self.wait_up(app, node, proc)) for proc, node in procs]

        def kill_holder(name: str, app, workers: list, result, ref: str):  # type: ignore[no-untyped-def]
            """SIGKILL the worker running the task once it has started; when, and who is left."""
            deadline = time.monotonic() + 60
            while not starts(ref):
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} recovery: the task did not start; see {self.data_dir}")
                time.sleep(0.02)
            active = app.control.inspect(destination=[n for _, n in workers], timeout=2).active() or {}
            holders = [w for w in workers if any(t["id"] == result.id for t in active.get(w[1]) or [])]
            if len(holders) != 1:
                raise BenchError(f"{name} recovery: {len(holders)} workers run the task, not 1: {active}")
            victim = holders[0][0]
            killed_at = time.monotonic()
            os.killpg(victim.proc.pid, signal.SIGKILL)  # the worker and its pool: a lost host
            victim.proc.wait()
            crm.latency = 0.0  # the killed call sleeps on; the redelivery need not
            if result.ready() or len(starts(ref)) != 1:
                raise BenchError(f"{name} recovery: the task was not in flight when its worker was killed")
            return killed_at, [w for w in workers if w is not holders[0]]

        def back_after(name: str, ref: str, killed_at: float, survivors: list, bound: float) -> float | None:  # type: ignore[type-arg]
            while len(starts(ref)) < 2:
                if not all(p.running for p, _ in survivors):
                    raise BenchError(f"{name} recovery: the second worker died; see {self.data_dir}")
                if time.monotonic() > killed_at + bound:
                    return None
                time.sleep(0.05)
            return starts(ref)[1] - killed_at

        pending = None
        if with_stock:
            stock.check_transport()
            workers = start_workers(
                "stock", "bench.stock", stock.app, range(2), {"STOCK_VISIBILITY_TIMEOUT": "30"}
            )
            ref = "bench-stock-recovery"
            crm.latency = task_s
            result = stock.upsert.delay(
                f"{crm.url}/api/doctors", {"reference": ref, "email": "stock@bench.example"}
            )
            killed_at, survivors = kill_holder("stock", stock.app, workers, result, ref)
            pending = (ref, result, killed_at, survivors)
            log(f"  stock: worker killed; waiting for the redelivery (up to {stock_wait_s:.0f} s) meanwhile")

        times: list[float] = []
        refs: list[str] = []
        workers: list = []  # type: ignore[type-arg]
        k = 0
        for _ in range(self.rounds):
            # The survivor of the last round stays: one start per round after the first.
            new = range(k, k + 2 - len(workers))
            workers += start_workers("ours", "sync.worker", app, new)
            k = new.stop
            doctor = Doctor.objects.create(
                first_name="B", last_name="Recovery", email=f"rec{k}@bench.example"
            )
            ref = str(doctor.pk)
            crm.latency = task_s
            result = sync.sync_doctor_to_external_system.delay(doctor.pk)
            killed_at, workers = kill_holder("ours", app, workers, result, ref)
            back = back_after("ours", ref, killed_at, workers, bound=120)
            if back is None:
                raise BenchError(
                    f"ours recovery: the task was not back 120 s after SIGKILL; see {self.data_dir}"
                )
            times.append(back)
            refs.append(ref)
            if result.get(timeout=60)["status"] != "synced":
                raise BenchError("ours recovery: the redelivered task did not sync")
            self.check_transport("ours recovery", [p for p, _ in workers], ours=True)
        log(f"  ours: back after {', '.join(f'{t:.1f}' for t in times)} s")

        stock_s: float | None = None
        if pending is not None:
            ref, result, killed_at, survivors = pending
            stock_s = back_after("stock", ref, killed_at, survivors, bound=stock_wait_s)
            if stock_s is None:
                log(f"  stock: not back {stock_wait_s:.0f} s after SIGKILL")
                for key in ("unacked", "unacked_index", "unacked_mutex"):
                    self.redis.delete(key)  # the killed worker's message: no later step may see it
            else:
                log(f"  stock: back after {stock_s:.1f} s")
                if result.get(timeout=60) != 201:
                    raise BenchError("stock recovery: the redelivered task failed")
                refs.append(ref)
            self.check_transport("stock recovery", [p for p, _ in survivors], ours=False)
            for proc, _ in survivors:
                proc.stop()
        for proc, _ in workers:
            proc.stop()
        crm.latency = 0.0
        # At least once, and no more: the killed delivery and one redelivery, one CRM record.
        for ref in refs:
            if len(starts(ref)) != 2 or ref not in crm.doctors:
                raise BenchError(
                    f"recovery: task {ref} started {len(starts(ref))} times, not twice (kill + 1)"
                )

        ours = statistics.median(times)
        if stock_s is not None:
            base, ratio = f"{stock_s:.1f}", f"{ours / stock_s:.2f} (stock {stock_s / ours:.1f}x)"
        else:
            base, ratio = (
                (f"> {stock_wait_s:.0f}", f"< {ours / stock_wait_s:.2f}") if with_stock else ("-", "-")
            )
        self.rows.append(
            (
                f"recovery after SIGKILL, kill to restart elsewhere (s, ours n={len(times)}; "
                "stock: visibility_timeout 30 s, default sweeps, n=1)",
                summary(times),
                base,
                ratio,
                "<= 1 (ours <= 15 s)",
            )
        )

    # --- 4. chord --------------------------------------------------------------
    def chord(self, n: int) -> None:
        from celery import chord

        from common import calls
        from common.celery_app import current_app
        from contracts import emails, sync

        cores = os.cpu_count() or 1
        # One sync worker per core (as in the I/O row), one emails worker for the callback.
        nodes = [(f"chord-sync{k}", "sync.worker", f"sync{k}") for k in range(cores)]
        nodes.append(("chord-emails", "emails.worker", "emails"))
        procs = [self.start(name, module, [f"--hostname={node}@%h"]) for name, module, node in nodes]
        for (_, _, node), proc in zip(nodes, procs, strict=True):
            self.wait_up(current_app(), node, proc)
        times = []
        for _ in range(self.rounds):
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
        self.rows.append(
            (
                f"chord of {n} echo -> notify_admin, {cores} sync workers (s)",
                summary(times, 2),
                "-",
                "-",
                "<= 2 s",
            )
        )

    # --- 4b. bulk enqueue for fan-outs -------------------------------------------
    def bulk(self, n: int) -> None:
        """A fan-out of `n`: `calls.send_many` (outbox rows in bulk, pipelined publish) against
        stock Celery's `.delay()` in a loop, and ours in a loop. Enqueue only: no worker runs,
        and each message is checked to be on its queue."""
        import bench.stock as stock
        from common import calls
        from common.outbox.models import OutboxMessage
        from contracts import sync

        variants = {
            "send_many": ("sync", lambda: calls.send_many(sync.echo, [(i,) for i in range(n)])),
            "stock .delay() loop": ("stock", lambda: [stock.echo.delay(i) for i in range(n)]),
            "ours .delay() loop": ("sync", lambda: [sync.echo.delay(i) for i in range(n)]),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(self.rounds):
            for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
                queue, send = variants[name]
                self.redis.delete(queue)
                t0 = time.perf_counter()
                send()
                rates[name].append(n / (time.perf_counter() - t0))
                queued = self.redis.llen(queue)
                if queued != n or OutboxMessage.objects.exists():
                    raise BenchError(f"{name}: {queued} of {n} messages on {queue}, outbox not empty")
                self.redis.delete(queue)
        ours, base = statistics.median(rates["send_many"]), statistics.median(rates["stock .delay() loop"])
        self.rows.append(
            (
                f"bulk enqueue of {n}: send_many vs stock .delay() loop (tasks/s; ours in a loop: "
                f"{summary(rates['ours .delay() loop'])})",
                summary(rates["send_many"]),
                summary(rates["stock .delay() loop"]),
                f"{ours / base:.2f}",
                ">= 3",
            )
        )

    # --- 5. report progress overhead --------------------------------------------
    def progress(self, n: int) -> None:
        from decimal import Decimal

        from django.db import connection

        from common.celery_app import current_app
        from common.models import Report, ReportItem
        from contracts import reports

        report, warm_up = Report.objects.create(name="bench"), Report.objects.create(name="warm-up")
        if connection.vendor == "postgresql":  # a million rows in seconds, not a minute
            with connection.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {ReportItem._meta.db_table} (report_id, label, value) "
                    "SELECT %s, 'i' || i, i %% 7 FROM generate_series(0, %s) AS i",
                    [report.pk, n - 1],
                )
        else:
            ReportItem.objects.bulk_create(
                (ReportItem(report=report, label=f"i{i}", value=Decimal(i % 7)) for i in range(n)),
                batch_size=5000,
            )
        ReportItem.objects.bulk_create(ReportItem(report=warm_up, label="w", value=1) for _ in range(1000))
        # Read the rows once so that the first setting measured does not pay for a cold file.
        for _ in ReportItem.objects.filter(report=report).values_list("label", "value").iterator(5000):
            pass
        setups = {"on (0.5 s)": "0.5", "off": "1000000"}
        runs: dict[str, list[float]] = {k: [] for k in setups}
        # Run to run the row moves by about 10% on this machine: 2% needs more than 3 rounds.
        rounds = 1 if self.rounds == 1 else max(4, self.rounds)
        for r in range(rounds):
            for name in list(setups) if r % 2 == 0 else list(reversed(setups)):
                proc = self.start("reports", "reports.worker", env={"REPORT_PROGRESS_INTERVAL": setups[name]})
                self.wait_up(current_app(), "reports", proc)
                # A fresh worker's first report pays its start-up (connections, first queries):
                # about 10% of this row, which would be measured as the progress overhead.
                reports.generate_large_report.delay(warm_up.pk).get(timeout=600)
                t0 = time.perf_counter()
                out = reports.generate_large_report.delay(report.pk).get(timeout=600)
                runs[name].append(time.perf_counter() - t0)
                if out["processed"] != n:
                    raise BenchError("report incomplete")
                proc.stop()
        on, off = statistics.median(runs["on (0.5 s)"]), statistics.median(runs["off"])
        self.rows.append(
            (
                f"report of {n:,} items, progress on/off (s)",
                summary(runs["on (0.5 s)"], 2),
                summary(runs["off"], 2),
                f"{on / off:.3f} ({100 * (on - off) / off:+.1f}%)",
                "<= +2%",
            )
        )

    # --- 6. memory ---------------------------------------------------------------
    def memory_per_service(self, n: int) -> None:
        from common.celery_app import current_app
        from common.routing import SERVICES
        from contracts import sync

        procs = {s: self.start(f"mem-{s}", f"{s}.worker") for s in SERVICES}
        for s, p in procs.items():
            self.wait_up(current_app(), s, p)
        time.sleep(2)
        at_rest = {s: rss_mb(p.proc.pid) for s, p in procs.items()}
        results = [sync.echo.delay(i) for i in range(n)]
        for res in results:
            res.get(timeout=120)
        after = {s: rss_mb(p.proc.pid) for s, p in procs.items()}
        for s, p in procs.items():
            p.stop()
            self.rows.append(
                (f"RSS {s} worker at rest / after (MiB)", f"{at_rest[s]:.0f} / {after[s]:.0f}", "-", "-", "-")
            )

    # --- 7. what one task costs Redis: the capacity model's inputs ----------------------
    def capacity(self, n: int) -> None:
        """One solo sync worker drains `n` no-op tasks through the bench's Redis; per task: the
        Redis commands, bytes in and out and Redis' own CPU (`INFO`, reset first), the stored
        message and result sizes, and the worker's rate (one core). README, Capacity."""
        from common.celery_app import current_app

        app, r = current_app(), self.redis

        def snapshot() -> tuple[float, int, int, float]:
            stats, cpu = r.info("stats"), r.info("cpu")
            calls = sum(self.commandstats().values())  # INFO, CONFIG and the bench's polling left out
            seconds = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
            return calls, int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"]), seconds

        self.reset_commandstats()
        before = snapshot()
        with app.producer_or_acquire() as producer, producer.batch():
            ids = [app.send_task("sync.echo", args=[i], producer=producer).id for i in range(n)]
        queued = snapshot()
        message = len(r.lindex("sync", 0) or b"")
        self.own["lindex"] += 1
        rate, procs = self.timed_drain(
            "capacity",
            app,
            "sync",
            [("sync.worker", "capacity", ["--pool=solo", "--prefetch-multiplier=4"])],
            ids,
        )
        for proc, _ in procs:
            proc.stop()
        drained = snapshot()
        result = int(r.strlen(f"celery-task-meta-{ids[0]}"))
        send = [(queued[k] - before[k]) / n for k in range(3)]
        run = [(drained[k] - queued[k]) / n for k in range(3)]
        cpu_ms = 1000 * (drained[3] - before[3]) / n
        self.capacity_lines = [
            f"| Redis commands | {send[0] + run[0]:.1f} ({send[0]:.1f} to enqueue, {run[0]:.1f} to run) |",
            f"| Redis network | {(send[1] + run[1]) / 1024:.1f} KB in, "
            f"{(send[2] + run[2]) / 1024:.1f} KB out |",
            f"| Redis CPU | {cpu_ms:.3f} ms (its whole process, enqueue and run) |",
            f"| message / stored result | {message:,} B waiting / {result:,} B kept for `RESULT_EXPIRES` |",
            f"| worker | {rate:,.0f} no-op tasks/s for one solo process (one core) |",
        ]
        for line in self.capacity_lines:
            log(f"  {line}")

    capacity_lines: list[str] = []

    def commands_row(self) -> None:
        """Dramatiq's cell in the row of Redis commands per no-op task (counted in the box step)."""
        if "dramatiq" not in self.commands:
            return
        measure = "Redis commands per no-op task, enqueue + drain (inside Lua counted too)"
        per_task = {
            name: {phase: sum(c.values()) / tasks for phase, (c, tasks) in phases.items()}
            for name, phases in self.commands.items()
        }
        if "ours" not in per_task:  # --only box: no row of ours to put it in
            self.rows.append((measure, "-", "-", "-", "-"))
        cells, ratios = [], []
        for name, label in (("dramatiq", ""), ("dramatiq+results", "results on: ")):
            enqueue, drain = per_task[name]["enqueue"], per_task[name]["drain"]
            cells.append(f"{label}{enqueue:.1f} + {drain:.1f} = {enqueue + drain:.1f}")
            if "ours" in per_task:
                ratios.append(f"{label}{sum(per_task['ours'].values()) / (enqueue + drain):.2f}")
        self.peer[measure] = (f"{cells[0]} ({cells[1]})", f"{ratios[0]} ({ratios[1]})" if ratios else "-")

    def commands_table(self, top: int = 16) -> str:
        """Redis calls per no-op task by command, the costliest first (the counted rounds)."""
        if not self.commands:
            return ""
        columns = [(name, phase) for name in self.commands for phase in ("enqueue", "drain")]
        per_task = {
            column: {cmd: calls / self.commands[column[0]][column[1]][1] for cmd, calls in c.items()}
            for column in columns
            for c in [self.commands[column[0]][column[1]][0]]
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
            lines.append(
                f"| {cmd} | " + " | ".join(f"{per_task[col].get(cmd, 0):.2f}" for col in columns) + " |"
            )
        rest = [sum(n for cmd, n in per_task[col].items() if cmd not in shown) for col in columns]
        if any(rest):
            lines.append("| (others) | " + " | ".join(f"{n:.2f}" for n in rest) + " |")
        lines.append(
            "| **total** | " + " | ".join(f"{sum(per_task[col].values()):.2f}" for col in columns) + " |"
        )
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated steps to run (noop,box,latency,io,recovery,chord,bulk,report,memory,capacity)",
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
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = (
        {
            "noop": 2000,
            "box": 2000,
            "latency": 50,
            "io": 60,
            "chord": 100,
            "bulk": 500,
            "report": 20_000,
            "memory": 500,
            "capacity": 2000,
        }
        if args.quick
        else {
            "noop": 12_000,
            "box": 3_000,
            "latency": 500,
            "io": 200,
            "chord": 1000,
            "bulk": 5000,
            "report": 1_000_000,  # >= 5 s a run: +-2% must be measurable
            "memory": 2000,
            "capacity": 5000,
        }
    )

    if args.profile and not shutil.which("py-spy"):
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")

    data_dir = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    started = time.perf_counter()
    with ExitStack() as stack:
        from devtools.platform import LocalPlatform

        # Peers of its own, never the environment's: nothing measured reaches a real service.
        local = stack.enter_context(LocalPlatform(data_dir, use_environment=False))
        local.start("redis", "smtp", "crm")
        redis, crm = local.peer("redis"), local.peer("crm")
        os.environ.update(
            DJANGO_SETTINGS_MODULE="common.django_settings",
            LOG_LEVEL="WARNING",
        )
        os.environ.pop("SENTRY_DSN", None)
        database = stack.enter_context(bench_database())
        import logging

        logging.getLogger("mail.log").setLevel(logging.WARNING)
        # A control reply that arrives after its timeout is requeued with a warning: noise here.
        logging.getLogger("kombu.transport.virtual.base").setLevel(logging.ERROR)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)

        # Dramatiq's processes, from the bench's own virtualenv: all killed on the way out.
        dramatiq = DramatiqBaseline(args.dramatiq_venv, redis.url, data_dir)
        stack.callback(dramatiq.close)
        bench = Bench(rounds, data_dir, redis.url, args.profile, dramatiq)
        bench.database = database
        steps: list[tuple[str, str, Callable[[], None]]] = [
            ("noop", "no-op throughput", lambda: bench.throughput(sizes["noop"])),
            ("box", "no-op drain per box", lambda: bench.box_drain(sizes["box"])),
            ("latency", "round-trip latency", lambda: bench.latency(sizes["latency"])),
            ("io", "I/O-bound queue", lambda: bench.io_bound(sizes["io"], crm)),
            ("recovery", "recovery after SIGKILL", lambda: bench.recovery(crm, with_stock=not args.quick)),
            ("chord", "chord", lambda: bench.chord(sizes["chord"])),
            ("bulk", "bulk enqueue", lambda: bench.bulk(sizes["bulk"])),
            ("report", "report progress", lambda: bench.progress(sizes["report"])),
            ("memory", "worker memory", lambda: bench.memory_per_service(sizes["memory"])),
            ("capacity", "Redis cost per task", lambda: bench.capacity(sizes["capacity"])),
        ]
        only = set(filter(None, args.only.split(",")))
        if only - {key for key, _, _ in steps}:
            parser.error(f"--only: unknown step(s) {sorted(only - {key for key, _, _ in steps})}")
        for key, title, step in steps:
            if not only or key in only:
                log(f"{title}...")
                t0 = time.perf_counter()
                step()
                log(f"{title}: {time.perf_counter() - t0:.0f} s")
        bench.commands_row()

    elapsed = time.perf_counter() - started
    header = (
        "measure",
        "ours (median, min-max)",
        "baseline",
        "ours/baseline",
        f"Dramatiq {dramatiq.version}",
        "ours/Dramatiq",
        "target",
    )
    rows = [(*row[:4], *bench.peer.get(row[0], ("-", "-")), row[4]) for row in bench.rows]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    table = "\n".join(lines)
    print(table)
    commands = bench.commands_table()
    if commands:
        print(f"\nRedis commands per no-op task (INFO commandstats):\n{commands}")
    profiles = "".join(f"\n### {label}\n\n```\n{text}\n```\n" for label, text in bench.profiles.items())
    if profiles:
        print(profiles)
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not args.quick and not only:
        args.results.write_text(
            f"# Benchmark results\n\n{stamp} on {machine}; full run, {rounds} rounds, {elapsed:.0f} s"
            f"{' (with the extra profiled round)' if profiles else ''}.\n"
            "Written by `./scripts/bench`; what each row compares is in the README (Benchmark). The"
            " baseline is stock Celery on kombu's transport (the I/O row: the chapter's prefork/4, the"
            " report row: progress off); Dramatiq runs from the bench's own virtualenv, its CLI's"
            f" defaults ({PROCESSES} processes x {THREADS} threads) on Redis DB {DB}. Where a row misses"
            " its target, the README (Benchmark, Where the targets stand) says why, from the profiles"
            " at the end.\n\n"
            + table
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
                f" {sizes['capacity']:,} no-op tasks (`INFO` after `CONFIG RESETSTAT`; the README's"
                " capacity model is built on these).\n\n| per no-op task | |\n|---|---|\n"
                + "\n".join(bench.capacity_lines)
                + "\n"
                if bench.capacity_lines
                else ""
            )
            + (f"\n## Where the time goes (py-spy --gil, unmeasured round)\n{profiles}" if profiles else "")
        )
        log(f"wrote {args.results}")
    shutil.rmtree(data_dir, ignore_errors=True)  # worker logs are kept only when a step failed
    log(f"done in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The bench's harness: the platform it runs on, its workers, timing, polling, Redis counts.

Every row (bench/rows/) measures through one `Bench`: it starts worker processes by module
name and waits for their ping, fills and drains queues, reads each task's result and counts
the Redis commands spent, less the bench's own polling. `platform()` starts the peers
(Redis, SMTP, the CRM sandbox), the database and Dramatiq's side, and stops them all on the
way out. The table and RESULTS.md are written by bench/results.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from bench.dramatiq_baseline import DramatiqBaseline


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
    r"\(bench/[\w/]+\.py\)|^<module> |^main |run_worker|worker_main|Celery\.start|WorkController\.start|"
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


def transport_of(app: Any) -> str:
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
        # The capacity row's lines (bench/rows/capacity.py): the RESULTS.md table of one task's cost.
        self.capacity_lines: list[str] = []

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
    def start(
        self, name: str, module: str, args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> Any:  # devtools.processes.ServiceProcess
        from devtools.platform import platform_process

        args = ["--without-mingle", "--without-gossip", "--loglevel=WARNING", *(args or [])]
        return platform_process(name, module, self.data_dir / f"{name}.log", args, env).start()

    def wait_up(self, app: Any, node_prefix: str, proc: Any) -> str:
        deadline = time.monotonic() + 90
        while True:
            for reply in app.control.ping(timeout=0.5) or []:
                for node in reply:
                    if node.startswith(node_prefix + "@"):
                        return node
            if not proc.running or time.monotonic() > deadline:
                raise BenchError(f"{node_prefix} worker did not start; see {self.data_dir}")

    def processed(self, app: Any, node: str, task: str) -> int:
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
        for owner_key in inflight:
            pipe.hlen(owner_key)
        for args, _ in pipe.command_stack:
            self.own[str(args[0]).lower()] += 1
        return sum(pipe.execute())

    def owner_pids(self) -> set[int]:
        """Processes heartbeating as owners of in-flight messages: those on our transport."""
        from common.transport.broker import scripts

        owners = cast("list[bytes]", self.redis.zrange(scripts.OWNERS, 0, -1))
        return {int(owner.split(b":")[-2]) for owner in owners}

    def check_transport(self, name: str, procs: list, ours: bool) -> None:
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

    def drain(self, name: str, queue: str, procs: list, deadline_s: float = 600) -> None:
        deadline = time.monotonic() + deadline_s
        while self.outstanding(queue):
            if time.monotonic() > deadline or not all(p.running for p in procs):
                raise BenchError(f"{name}: drain did not finish; see {self.data_dir}")
            time.sleep(0.02)

    def wait_results(self, name: str, task_ids: list[str], procs: list, deadline_s: float = 60) -> None:
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

    def start_nodes(
        self, name: str, app: Any, workers: list[tuple[str, str, list[str]]]
    ) -> tuple[list[Any], list[str]]:
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
        app: Any,
        queue: str,
        workers: list[tuple[str, str, list[str]]],
        task_ids: list[str],
        profile: bool = False,
        commands: Counter[str] | None = None,
    ) -> tuple[float, list]:
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
        app: Any,
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


@dataclass
class Platform:
    """What a run measures with: the bench, the CRM sandbox and Dramatiq's side."""

    bench: Bench
    crm: Any
    dramatiq: DramatiqBaseline


def quiet_logs() -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # A control reply that arrives after its timeout is requeued with a warning: noise here.
    logging.getLogger("kombu.transport.virtual.base").setLevel(logging.ERROR)


@contextmanager
def platform(data_dir: Path, rounds: int, profile: bool, dramatiq_venv: Path) -> Iterator[Platform]:
    """Redis, SMTP and the CRM sandbox of the bench's own, a migrated database, Dramatiq's side
    and a `Bench` on them; every process started here is stopped on the way out."""
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
        quiet_logs()
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)

        # Dramatiq's processes, from the bench's own virtualenv: all killed on the way out.
        dramatiq = DramatiqBaseline(dramatiq_venv, redis.url, data_dir)
        stack.callback(dramatiq.close)
        bench = Bench(rounds, data_dir, redis.url, profile, dramatiq)
        bench.database = database
        yield Platform(bench, crm, dramatiq)


def run_steps(steps: Sequence[tuple[str, str, Callable[[], None]]], only: set[str]) -> None:
    """Each step picked (all when `only` is empty), its title and duration logged."""
    for key, title, step in steps:
        if not only or key in only:
            log(f"{title}...")
            t0 = time.perf_counter()
            step()
            log(f"{title}: {time.perf_counter() - t0:.0f} s")

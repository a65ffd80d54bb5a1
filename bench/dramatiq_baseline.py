"""Dramatiq, the second baseline, from the bench's side: its workers and driver as subprocesses.

Everything of Dramatiq runs in the bench's own virtualenv (`BENCH_DRAMATIQ_VENV`, made by
`./scripts/bench`), from `bench/dramatiq_peer.py`: the workers by Dramatiq's CLI, the
enqueueing and the round trips by its driver. Its keys live in a Redis DB of their own
(`DB`) on the bench's redis-server, so neither side sees the other's keys; `INFO
commandstats` is per server, and the steps never overlap. This process only polls Redis for
the queue's end (each of its commands counted, to be left out of the commands per task) and
reads what each worker process recorded at shutdown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DB = 1  # ours use DB 0
NAMESPACE = "dramatiq"  # RedisBroker's default
QUEUE = "bench"  # bench.dramatiq_peer.QUEUE
PROCESSES, THREADS = 2, 8  # Dramatiq's CLI defaults: 2 processes x 8 threads (a 2-core box)


class DramatiqError(RuntimeError):
    pass


class Workers:
    """A running `dramatiq` CLI: a supervisor and its forked worker processes, one process group."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, processes: int, log: Path) -> None:
        self.proc = proc
        self.out = out
        self.processes = processes
        self.log = log

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        return len(list(self.out.glob("*.ready"))) >= self.processes

    def stop(self, timeout: float = 30) -> None:
        """TERM (Dramatiq's graceful shutdown: each worker process writes its record), then KILL.

        The group is killed in the end whatever happened: no worker process outlives a step.
        """
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # start_new_session: the group is its pid
            except ProcessLookupError:
                pass
            self.proc.wait()

    def records(self) -> tuple[list[tuple[float, Any]], list[str]]:
        """(finish time, argument) of every task the worker processes ran, and their failures."""
        files = sorted(self.out.glob("*.json"))
        if len(files) != self.processes:
            raise DramatiqError(
                f"{len(files)} of {self.processes} Dramatiq worker processes recorded their tasks "
                f"at shutdown; see {self.log}"
            )
        done: list[tuple[float, Any]] = []
        failed: list[str] = []
        for f in files:
            data = json.loads(f.read_text())
            done += [(t, arg) for t, arg in data["done"]]
            failed += data["failed"]
        return done, failed


class DramatiqBaseline:
    def __init__(self, venv: Path, redis_url: str, data_dir: Path) -> None:
        import redis

        self.python = venv / "bin" / "python"
        self.cli = venv / "bin" / "dramatiq"
        if not (self.python.exists() and self.cli.exists()):
            raise DramatiqError(
                f"no Dramatiq virtualenv at {venv}: run the bench with ./scripts/bench, which makes it"
            )
        self.url = f"{redis_url.rsplit('/', 1)[0]}/{DB}"
        self.redis = redis.Redis.from_url(self.url)
        self.data_dir = data_dir
        self.own: Counter[str] = Counter()  # the Redis commands sent here (the bench shares its own)
        self.started: list[Workers] = []
        self.version = self.run_python(["-c", "import dramatiq; print(dramatiq.__version__)"], 60).strip()

    def env(self, out: Path | None = None) -> dict[str, str]:
        """The bench's environment without its import path: nothing of ours in Dramatiq's processes."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(BENCH_DRAMATIQ_URL=self.url, PYTHONPATH=str(ROOT))
        if out is not None:
            env["BENCH_DRAMATIQ_OUT"] = str(out)
        return env

    def run_python(self, args: list[str], timeout: float) -> str:
        try:
            done = subprocess.run(
                [str(self.python), *args],
                cwd=ROOT,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise DramatiqError(f"Dramatiq driver {args} took over {timeout:.0f} s") from None
        if done.returncode != 0:
            raise DramatiqError(f"Dramatiq driver {args} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout

    def driver(self, *args: str, timeout: float = 300) -> dict[str, Any]:
        """`python -m bench.dramatiq_peer ARGS` in the bench's virtualenv: its JSON answer."""
        out = self.run_python(["-m", "bench.dramatiq_peer", *args], timeout)
        return dict(json.loads(out.strip().splitlines()[-1]))

    def flush(self) -> None:
        self.redis.flushdb()
        self.own["flushdb"] += 1

    @contextmanager
    def workers(
        self, name: str, processes: int = PROCESSES, threads: int = THREADS, ready_s: float = 60
    ) -> Iterator[Workers]:
        """`dramatiq bench.dramatiq_peer --processes P --threads T`, stopped (and its group killed)
        on the way out, whatever happened. With `ready_s`, wait until every process has booted."""
        from devtools.processes import die_with_parent

        out = self.data_dir / f"dramatiq-{name}-{len(self.started)}"
        out.mkdir(parents=True)
        log = self.data_dir / f"dramatiq-{name}.log"
        with log.open("ab") as log_file:
            proc = subprocess.Popen(
                [
                    str(self.cli),
                    "bench.dramatiq_peer",
                    "--processes",
                    str(processes),
                    "--threads",
                    str(threads),
                    "--queues",
                    QUEUE,
                    "--path",
                    str(ROOT),
                    "--worker-shutdown-timeout",
                    "20000",
                ],
                cwd=ROOT,
                env=self.env(out),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        workers = Workers(proc, out, processes, log)
        self.started.append(workers)
        try:
            deadline = time.monotonic() + ready_s
            while ready_s and not workers.ready():
                if not workers.running or time.monotonic() > deadline:
                    raise DramatiqError(f"Dramatiq workers {name} did not start; see {log}")
                time.sleep(0.05)
            yield workers
        finally:
            workers.stop()

    def close(self) -> None:
        """Kill whatever is still running (a failed step): the bench leaves no process behind."""
        for workers in self.started:
            workers.stop(timeout=5)
        self.redis.close()

    def outstanding(self) -> int:
        """Messages enqueued and not yet acknowledged (or dead-lettered): the queue's message hash."""
        self.own["hlen"] += 1
        return int(self.redis.hlen(f"{NAMESPACE}:{QUEUE}.msgs"))

    def drain(
        self,
        name: str,
        actor: str,
        n: int,
        *extra: str,
        counted: dict[str, Counter[str]] | None = None,
        reset: Callable[[], None] | None = None,
        commandstats: Callable[[], Counter[str]] | None = None,
        deadline_s: float = 300,
    ) -> tuple[float, float]:
        """Enqueue `n` messages for `actor`, then start the workers and wait until all are acked.

        Returns (enqueue rate, execution rate), the latter from the tasks' finish times (first
        to last), so worker start-up and polling are left out, as for ours. Every task must
        have run exactly once, without failure. `counted` gets the Redis calls of the enqueue
        and of the drain (from the workers' start to an empty queue), as for ours.
        """
        self.flush()
        if counted is not None and reset and commandstats:
            reset()
        sent = self.driver("enqueue", actor, str(n), *extra)
        if counted is not None and reset and commandstats:
            counted["enqueue"].update(commandstats())
            reset()
        if self.outstanding() != n:
            raise DramatiqError(f"{name}: {self.outstanding()} messages queued, not {n}")
        with self.workers(name, ready_s=0) as workers:
            deadline = time.monotonic() + deadline_s
            while self.outstanding():
                if time.monotonic() > deadline or not workers.running:
                    raise DramatiqError(f"{name}: drain did not finish; see {workers.log}")
                time.sleep(0.02)
            if counted is not None and reset and commandstats:
                counted["drain"].update(commandstats())
        done, failed = workers.records()
        if failed:
            raise DramatiqError(f"{name}: {len(failed)} tasks failed, e.g. {failed[0]}")
        runs = Counter(arg for _, arg in done)
        if len(done) != n or set(runs) != set(range(n)):
            twice = sum(1 for c in runs.values() if c > 1)
            raise DramatiqError(
                f"{name}: {len(done)} executions of {len(runs)} distinct tasks for {n} "
                f"({twice} ran more than once; must be exactly once)"
            )
        times = [t for t, _ in done]
        return n / sent["seconds"], (n - 1) / (max(times) - min(times))

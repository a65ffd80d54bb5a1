"""Tooling for the fault suite: named worker processes to kill, and a Redis to restart."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from celery import Celery

from devtools.local_redis import LocalRedis
from devtools.platform import platform_process, worker_process
from devtools.processes import wait_for_workers


class NamedWorker:
    """One worker process of `service` under its own node name, e.g. `sync-a@host`."""

    def __init__(
        self,
        service: str,
        name: str,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        module: str = "",
    ) -> None:
        """`args` follow the node name's; `module` runs in place of `<service>.worker` (the
        bench's stock Celery worker, `bench.stock`)."""
        self.name = name
        self.node = ""  # the full node name (`sync-a@host`) once it answers ping
        self.log = log_dir / f"{name}-worker.log"
        argv = [f"--hostname={name}@%h", "--without-mingle", "--without-gossip", *args]
        if module:
            self.proc = platform_process(name, module, self.log, argv, env)
        else:
            self.proc = worker_process(service, self.log, argv, env, name)

    def start(self, app: Celery, timeout: float = 90) -> NamedWorker:
        self.proc.start()
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.running:
                raise RuntimeError(f"worker {self.name} exited during start-up:\n{self.tail()}")
            try:
                self.node = wait_for_workers(app, [self.name], timeout=1)[self.name]
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker {self.name} did not answer ping:\n{self.tail()}") from None

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def kill(self) -> None:
        """SIGKILL the worker and every process it started (a lost host, an OOM kill)."""
        os.killpg(self.pid, signal.SIGKILL)
        assert self.proc.proc is not None
        self.proc.proc.wait()

    def terminate(self, timeout: float = 60) -> int | None:
        return self.proc.stop(timeout=timeout)

    def stacks(self) -> str:
        """Every thread's stack in the worker (py-spy dump, if py-spy is on PATH): why it hangs."""
        import shutil
        import subprocess

        spy = shutil.which("py-spy")
        if spy is None or self.proc.proc is None:
            return "(py-spy not on PATH: no stacks)"
        dumped = subprocess.run(
            [spy, "dump", "--locals", "--pid", str(self.proc.proc.pid)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return dumped.stdout + dumped.stderr

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:]) if self.log.exists() else "(no log)"


class RestartableRedis(LocalRedis):
    """A redis-server with its append-only file on, restarted on the same port and data."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.extra_args = ["--appendonly", "yes", "--appendfsync", "everysec"]

    def start(self, timeout: float = 10) -> Self:
        super().start(timeout)
        return self

    def restart(self, down_for: float = 1.0) -> float:
        """Stop (SIGTERM: Redis writes its AOF and exits), wait, start again; seconds down."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(down_for)
        self.start()
        return time.monotonic() - began

    def freeze(self) -> None:
        """SIGSTOP: TCP stays up, nothing answers (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

"""Starting and stopping the platform's own processes (workers, beat, flower, web).

Used by the local stack, the tests and the benchmark, so all three run the real entry
points the same way. Children die with their parent (PR_SET_PDEATHSIG), so an
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from celery import Celery

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: rely on explicit stop()
        pass


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment and import path, so children import the same code."""
    env = dict(os.environ)
    # Absolute: Pants puts relative source roots on sys.path, and a child may run elsewhere.
    env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in sys.path if p and Path(p).exists())
    env.update(extra or {})
    return env


class ServiceProcess:
    def __init__(
        self,
        name: str,
        module: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log: IO[bytes] | Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", module, *args]
        self.env = child_env(env)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        out: IO[bytes] | int | None
        if isinstance(self.log, Path):
            out = self.log.open("ab")
        else:
            out = self.log
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us in order
            preexec_fn=die_with_parent,
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> int | None:
        """TERM (Celery's warm shutdown: finish running tasks), then KILL after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def wait_for_workers(app: Celery, services: Sequence[str], timeout: float = 60) -> dict[str, str]:
    """Block until a worker of each service answers ping; return service -> worker name."""
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while True:
        replies = app.control.ping(timeout=0.5) or []
        for reply in replies:
            for worker in reply:
                service = worker.split("@", 1)[0]
                if service in services:
                    found[service] = worker
        if all(s in found for s in services):
            return found
        if time.monotonic() > deadline:
            missing = sorted(set(services) - set(found))
            raise TimeoutError(f"workers did not come up within {timeout}s: {', '.join(missing)}")
        time.sleep(0.2)

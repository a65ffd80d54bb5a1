"""A throwaway redis-server for development and tests, when REDIS_URL names none."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import redis

from devtools.ports import free_port
from devtools.processes import die_with_parent


class RedisNotFoundError(RuntimeError):
    pass


class LocalRedis:
    """Starts `redis-server` on a free loopback port, persisting nothing."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="jobs-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []  # later arguments win (e.g. --appendonly yes)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotFoundError(
                "redis-server is not on PATH. Install it (apt-get install redis-server) "
                "or point REDIS_URL at a running Redis."
            )
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # a killed parent leaves no redis-server behind
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                # Ours, not whatever else answers on the port (another test's server), and
                # done loading its data (a restart with the append-only file on).
                info = client.info()
                if info.get("process_id") != self.proc.pid:
                    raise redis.ConnectionError("another process answers on the port")
                if not info.get("loading"):
                    return self
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A throwaway Redis Sentinel group: a primary, a replica and three sentinels, on free ports.

For the fault suite (tests/faults/test_sentinel_failover.py): `kill_primary()` SIGKILLs the
primary and `wait_for_failover()` waits until the sentinels have promoted the replica. The
sentinels notice a dead primary after `down_after_ms` (1 s here; production values are
usually 5-30 s) and fail over at once: a quorum of 2 out of 3. With `password` the data nodes
require it (and the replica uses it to follow); with `sentinel_password` the sentinels require
theirs (a different one, as in production).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import redis

from devtools.local_redis import LocalRedis, RedisNotFoundError
from devtools.ports import free_port
from devtools.processes import die_with_parent

HOST = "127.0.0.1"


class LocalSentinelGroup:
    """`redis-server` primary + replica (`--replicaof`) and three `redis-sentinel` processes."""

    def __init__(
        self,
        master_name: str = "jobs",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        sentinels: int = 3,
        data_args: tuple[str, ...] = (),
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.primary = LocalRedis()
        self.replica = LocalRedis()
        self.primary.extra_args = [*auth, *data_args]
        self.replica.extra_args = ["--replicaof", HOST, str(self.primary.port), *auth, *data_args]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.dir = Path(tempfile.mkdtemp(prefix="jobs-sentinel-"))
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """REDIS_URL for the group (REDIS_SENTINEL_MASTER is `master_name`)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{HOST}:{port}" for port in self.sentinel_ports) + "/0"

    @property
    def env(self) -> dict[str, str]:
        """The settings a process needs to use the group."""
        env = {"REDIS_URL": self.url, "REDIS_SENTINEL_MASTER": self.master_name}
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    def start(self, timeout: float = 20) -> LocalSentinelGroup:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RedisNotFoundError(
                "redis-sentinel is not on PATH. Install it (apt-get install redis-sentinel; "
                "./scripts/ensure-services does)."
            )
        try:
            self._start_data_node(self.primary)
            self._start_data_node(self.replica)
            for port in self.sentinel_ports:
                conf = self.dir / f"sentinel-{port}.conf"
                lines = [
                    f"port {port}",
                    f"bind {HOST}",
                    f"dir {self.dir}",
                    f"sentinel monitor {self.master_name} {HOST} {self.primary.port} 2",
                    f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                    f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {self.master_name} 1",
                ]
                if self.password:
                    lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
                if self.sentinel_password:
                    # Its own password, and the one it gives the other sentinels.
                    lines += [
                        f"requirepass {self.sentinel_password}",
                        f"sentinel sentinel-pass {self.sentinel_password}",
                    ]
                conf.write_text("\n".join(lines) + "\n")
                self.sentinel_procs.append(
                    subprocess.Popen(
                        [binary, str(conf)],
                        stdout=(self.dir / f"sentinel-{port}.log").open("ab"),
                        stderr=subprocess.STDOUT,
                        preexec_fn=die_with_parent,
                    )
                )
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_data_node(self, node: LocalRedis) -> None:
        """LocalRedis.start checks readiness without a password: check it here with one."""
        if not self.password:
            node.start()
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotFoundError("redis-server is not on PATH (apt-get install redis-server)")
        node.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(node.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node.dir),
                *node.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        client = self.data_client(node.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.info("server").get("process_id") == node.proc.pid:
                    return
            except redis.RedisError:
                pass
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {node.port}")
            time.sleep(0.05)

    def data_client(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, password=self.password, socket_timeout=2)

    def _wait_until_ready(self, timeout: float) -> None:
        """Replica in sync; every sentinel sees the primary, the replica and the other sentinels.

        Only then can a failover happen: a sentinel that has not yet discovered the replica
        or its peers would have no one to promote or no quorum.
        """
        deadline = time.monotonic() + timeout
        replica = self.data_client(self.replica.port)
        others = len(self.sentinel_ports) - 1
        while True:
            try:
                synced = replica.info("replication").get("master_link_status") == "up"
                ready = synced and all(
                    int(state.get("num-slaves", 0)) >= 1
                    and int(state.get("num-other-sentinels", 0)) >= others
                    for state in (
                        cast("dict[str, Any]", self.sentinel(port).sentinel_master(self.master_name))
                        for port in self.sentinel_ports
                    )
                )
                if ready:
                    return
            except redis.RedisError:
                pass
            if any(p.poll() is not None for p in self.sentinel_procs):
                raise RuntimeError(f"a redis-sentinel exited during start-up:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinel group was not ready within {timeout} s:\n{self.logs()}")
            time.sleep(0.1)

    def sentinel(self, port: int | None = None) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=port or self.sentinel_ports[0],
            password=self.sentinel_password,
            socket_timeout=2,
            decode_responses=True,
        )

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it now."""
        for port in self.sentinel_ports:
            try:
                reply = self.sentinel(port).sentinel_get_master_addr_by_name(self.master_name)
                address = cast("tuple[str, int] | None", reply)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def kill_primary(self) -> float:
        """SIGKILL the primary (a lost host: no shutdown, no last write); returns the monotonic time."""
        assert self.primary.proc is not None
        self.primary.proc.send_signal(signal.SIGKILL)
        self.primary.proc.wait()
        return time.monotonic()

    def wait_for_failover(self, timeout: float = 30) -> float:
        """Wait until the replica is primary by the sentinels and by itself; the monotonic time."""
        deadline = time.monotonic() + timeout
        replica = self.data_client(self.replica.port)
        while time.monotonic() < deadline:
            try:
                if (
                    self.primary_port() == self.replica.port
                    and replica.info("replication")["role"] == "master"
                ):
                    return time.monotonic()
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"no failover within {timeout} s:\n{self.logs()}")

    def logs(self, lines: int = 20) -> str:
        out = []
        for path in sorted(self.dir.glob("sentinel-*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.sentinel_procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.sentinel_procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.sentinel_procs.clear()
        self.replica.stop()
        self.primary.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalSentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

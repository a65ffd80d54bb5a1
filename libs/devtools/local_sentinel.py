"""A throwaway Redis Sentinel group: a primary, a replica and three sentinels, on free ports.

For the fault suite (tests/faults/test_sentinel_failover.py): `kill_primary()` SIGKILLs the
primary and `wait_for_failover()` waits until the sentinels have promoted the replica. The
sentinels notice a dead primary after `down_after_ms` (1 s here; production values are
usually 5-30 s) and fail over at once: a quorum of 2 out of 3.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

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
    ) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.primary = LocalRedis()
        self.replica = LocalRedis()
        self.primary.extra_args = [*data_args]
        self.replica.extra_args = ["--replicaof", HOST, str(self.primary.port), *data_args]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.dir = Path(tempfile.mkdtemp(prefix="jobs-sentinel-"))
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """REDIS_URL for the group (REDIS_SENTINEL_MASTER is `master_name`)."""
        return ";".join(f"sentinel://{HOST}:{port}" for port in self.sentinel_ports) + "/0"

    def start(self, timeout: float = 20) -> LocalSentinelGroup:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RedisNotFoundError(
                "redis-sentinel is not on PATH. Install it (apt-get install redis-sentinel; "
                "./scripts/ensure-services does)."
            )
        try:
            self.primary.start()
            self.replica.start()
            for port in self.sentinel_ports:
                conf = self.dir / f"sentinel-{port}.conf"
                conf.write_text(
                    f"port {port}\n"
                    f"bind {HOST}\n"
                    f"dir {self.dir}\n"
                    f"sentinel monitor {self.master_name} {HOST} {self.primary.port} 2\n"
                    f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.master_name} 1\n"
                )
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

    def _wait_until_ready(self, timeout: float) -> None:
        """Replica in sync; every sentinel sees the primary, the replica and the other sentinels.

        Only then can a failover happen: a sentinel that has not yet discovered the replica
        or its peers would have no one to promote or no quorum.
        """
        deadline = time.monotonic() + timeout
        replica = redis.Redis(host=HOST, port=self.replica.port, socket_timeout=2)
        others = len(self.sentinel_ports) - 1
        while True:
            try:
                synced = replica.info("replication").get("master_link_status") == "up"
                ready = synced and all(
                    int(state.get("num-slaves", 0)) >= 1
                    and int(state.get("num-other-sentinels", 0)) >= others
                    for state in (
                        self.sentinel(port).sentinel_master(self.master_name) for port in self.sentinel_ports
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
            host=HOST, port=port or self.sentinel_ports[0], socket_timeout=2, decode_responses=True
        )

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it now."""
        for port in self.sentinel_ports:
            try:
                address = self.sentinel(port).sentinel_get_master_addr_by_name(self.master_name)
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
        replica = redis.Redis(host=HOST, port=self.replica.port, socket_timeout=2)
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

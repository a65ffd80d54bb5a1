"""An in-process stand-in for the few Redis commands the fast tier's code paths use.

Redis is no edge a task sees, but our locks (`common.transport.locks`), the intake's
outbox-copy keys and the final-failure records talk to it. Inside `devtools.testing.jobs.Jobs`
they get a `MemoryRedis`: SET (NX, EX/PX), GET, MGET, DELETE, EXISTS, EXPIRE, LPUSH/LTRIM/LRANGE,
ZADD/ZREMRANGEBYSCORE/ZREVRANGE (the revokes' index), pipelines, and redis-py's `Lock`
semantics (set-if-absent with expiry, owner-only release).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any


class MemoryLock:
    """redis-py's `Lock` semantics: set-if-absent with expiry, owner-only release."""

    def __init__(self, redis: MemoryRedis, name: str, timeout: float | None) -> None:
        self.redis, self.name, self.timeout = redis, name, timeout
        self.token = uuid.uuid4().hex

    def acquire(self, blocking: bool | None = None, **_: Any) -> bool:
        return bool(
            self.redis.set(
                self.name, self.token, nx=True, px=int(self.timeout * 1000) if self.timeout else None
            )
        )

    def release(self) -> None:
        from redis.exceptions import LockNotOwnedError

        if self.redis.get(self.name) != self.token.encode():
            raise LockNotOwnedError("Cannot release a lock that's no longer owned")
        self.redis.delete(self.name)

    def locked(self) -> bool:
        return self.redis.get(self.name) is not None


class MemoryRedis:
    """The commands our locks, the intake and the failure records use, in one process."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._expires: dict[str, float] = {}
        self._lock = threading.RLock()

    def _alive(self, key: str) -> bool:
        deadline = self._expires.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            self._data.pop(key, None)
            self._expires.pop(key, None)
        return key in self._data

    @staticmethod
    def _b(value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    def ping(self) -> bool:
        return True

    def set(
        self,
        name: str,
        value: Any,
        ex: float | None = None,
        px: int | None = None,
        nx: bool = False,
        **_: Any,
    ) -> bool | None:
        with self._lock:
            if nx and self._alive(name):
                return None
            self._data[name] = self._b(value)
            self._expires.pop(name, None)
            if ex is not None or px is not None:
                self._expires[name] = time.monotonic() + (ex if ex is not None else px / 1000)  # type: ignore[operator]
            return True

    def get(self, name: str) -> bytes | None:
        with self._lock:
            return self._data.get(name) if self._alive(name) else None

    def delete(self, *names: str) -> int:
        with self._lock:
            return sum(1 for n in names if self._alive(n) and self._data.pop(n, None) is not None)

    def exists(self, *names: str) -> int:
        with self._lock:
            return sum(1 for n in names if self._alive(n))

    def mget(self, names: list[str]) -> list[bytes | None]:
        return [self.get(n) for n in names]

    def expire(self, name: str, seconds: float) -> bool:
        with self._lock:
            if not self._alive(name):
                return False
            self._expires[name] = time.monotonic() + seconds
            return True

    def _zset(self, name: str) -> dict[bytes, float]:
        if not self._alive(name):
            self._data[name] = {}
        zset: dict[bytes, float] = self._data[name]
        return zset

    def zadd(self, name: str, mapping: dict[Any, float]) -> int:
        with self._lock:
            zset = self._zset(name)
            new = sum(1 for m in mapping if self._b(m) not in zset)
            zset.update({self._b(m): float(score) for m, score in mapping.items()})
            return new

    def zremrangebyscore(self, name: str, low: Any, high: Any) -> int:
        with self._lock:
            zset = self._zset(name)
            lo = float("-inf") if low == "-inf" else float(low)
            gone = [m for m, score in zset.items() if lo <= score <= float(high)]
            for m in gone:
                del zset[m]
            return len(gone)

    def zrevrange(self, name: str, start: int, end: int, withscores: bool = False) -> list[Any]:
        with self._lock:
            ranked = sorted(self._zset(name).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
            picked = ranked[start : None if end == -1 else end + 1]
            return list(picked) if withscores else [m for m, _ in picked]

    def lpush(self, name: str, *values: Any) -> int:
        with self._lock:
            items = (
                self._data.setdefault(name, [])
                if self._alive(name) or name not in self._data
                else self._data[name]
            )
            for v in values:
                items.insert(0, self._b(v))
            return len(items)

    def ltrim(self, name: str, start: int, end: int) -> bool:
        with self._lock:
            items = self._data.get(name, [])
            self._data[name] = items[start : None if end == -1 else end + 1]
            return True

    def lrange(self, name: str, start: int, end: int) -> list[bytes]:
        with self._lock:
            items = self._data.get(name, []) if self._alive(name) else []
            return list(items[start : None if end == -1 else end + 1])

    def lock(self, name: str, timeout: float | None = None, blocking: bool = True, **_: Any) -> MemoryLock:
        return MemoryLock(self, name, timeout)

    def register_script(self, script: str) -> Any:
        """The Python twin of one of our Lua scripts (only those the fast tier's paths run)."""
        from common.transport import unique_jobs
        from devtools.testing import unique_stub

        twins = {unique_jobs.RELEASE: unique_stub.release}
        if script not in twins:
            raise NotImplementedError("MemoryRedis runs no Lua: this script has no Python twin")
        return lambda keys=(), args=(), client=None: twins[script](list(keys), list(args), client or self)

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)

    def close(self) -> None:
        pass

    def flushall(self) -> None:
        with self._lock:
            self._data.clear()
            self._expires.clear()


class _Pipeline:
    def __init__(self, redis: MemoryRedis) -> None:
        self._redis, self._calls = redis, []  # type: ignore[var-annotated]

    def __getattr__(self, command: str) -> Any:
        def queue(*args: Any, **kwargs: Any) -> _Pipeline:
            self._calls.append((command, args, kwargs))
            return self

        return queue

    def execute(self) -> list[Any]:
        calls, self._calls = self._calls, []
        return [getattr(self._redis, c)(*a, **k) for c, a, k in calls]

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, *_: Any) -> None:
        self._calls = []

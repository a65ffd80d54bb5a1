"""The one lock implementation: Redis, a unique token per holder, owner-only release.

redis-py's `Lock` does the hard part with Lua scripts (set-if-absent with expiry; compare
token then delete), so a run that outlives its timeout cannot delete the lock another
run now holds: its release is refused and logged instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import cast

import redis
from redis.exceptions import LockError

from common.settings import get_settings
from common.transport.tls import redis_from_url

logger = logging.getLogger(__name__)
PREFIX = "lock:"


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    # rediss://: the broker's TLS, certificate verified (the beat leader lock uses this client too).
    return cast(redis.Redis, redis_from_url(url, socket_connect_timeout=5, socket_timeout=10))


def redis_client() -> redis.Redis:
    return _client(get_settings().redis_url)


@contextmanager
def task_lock(name: str, timeout: float = 300, *, client: redis.Redis | None = None) -> Iterator[bool]:
    """Yield True if this caller holds `name` for up to `timeout` seconds, else False.

    Non-blocking, like the usual Django `cache.add` lock: a second run skips rather than waits.
    """
    lock = (client or redis_client()).lock(PREFIX + name, timeout=timeout, blocking=False)
    acquired = lock.acquire()
    try:
        yield acquired
    finally:
        if acquired:
            try:
                lock.release()
            except LockError:
                logger.warning(
                    "Lock %s expired after %ss while held and may now belong to another run; "
                    "left it alone. Raise its timeout if this recurs.",
                    name,
                    timeout,
                )

"""Only one beat schedules at a time: the leader holds a Redis lock and renews it each tick.

A second beat started by mistake (or as a standby) finds the lock taken and only waits;
if the leader dies, its lock expires within LOCK_TIMEOUT and a standby takes over. The
lock is the platform's one lock implementation (redis-py's token-owned Lua lock).
"""

from __future__ import annotations

import logging
from typing import Any

from django_celery_beat.schedulers import DatabaseScheduler
from redis.exceptions import LockError, RedisError

from common.observability.sentry import cron_check_ins_on, cron_monitor_problem
from common.transport.locks import PREFIX, redis_client

logger = logging.getLogger(__name__)

LOCK_NAME = PREFIX + "beat-leader"
LOCK_TIMEOUT = 30.0
RENEW_EVERY = LOCK_TIMEOUT / 3


class LeaderDatabaseScheduler(DatabaseScheduler):
    """django-celery-beat's DatabaseScheduler that ticks only while it leads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = redis_client().lock(LOCK_NAME, timeout=LOCK_TIMEOUT, thread_local=False)
        self._leading = False
        self._unmonitored: set[str] = set()
        super().__init__(*args, **kwargs)

    def _still_leading(self) -> bool:
        try:
            if self._leading:
                self._lock.reacquire()  # reset the expiry; fails if we lost the lock
                return True
            self._leading = bool(self._lock.acquire(blocking=False))
            if self._leading:
                logger.info("beat: became the leader; scheduling")
            return self._leading
        except (LockError, RedisError) as exc:
            if self._leading:
                logger.warning("beat: lost the leader lock (%s); standing by", exc)
            self._leading = False
            return False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._still_leading():
            return RENEW_EVERY / 2  # a standby checks often so a takeover is quick
        return min(super().tick(*args, **kwargs), RENEW_EVERY)

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        # Sentry's beat patch (common.observability.sentry) skips a schedule Crons cannot take
        # without a word: say so once per job, so a job edited to "every 30 s" is not silently
        # unmonitored.
        if entry.name not in self._unmonitored and cron_check_ins_on():
            problem = cron_monitor_problem(entry.schedule)
            if problem is not None:
                self._unmonitored.add(entry.name)
                logger.warning(
                    "beat: periodic task %r is not monitored by Sentry Crons (no check-ins): %s",
                    entry.name,
                    problem,
                )
        super().apply_entry(entry, producer=producer)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._leading:
                try:
                    self._lock.release()
                except (LockError, RedisError):
                    pass

"""Cancelling tasks so that it sticks: a revoke is kept in Redis, not in workers' memory.

`revoke(task_ids)` records each id in the broker's Redis (`common.transport.revocation`) for
TASK_REVOKE_RETENTION seconds, never less than RESULT_EXPIRES. Then, wherever the task is:

- waiting in its queue or the delayed set (a countdown, an ETA, a retry's backoff), sent
  before or after the revoke, with or without a worker running: the intake refuses it on
  receipt, stores REVOKED and drops it (no dead letter);
- fetched into a worker's prefetch: its start asks again (`check_at_start`, every task's
  `before_start`, see `common.celery_app.implements`) and ends it REVOKED unrun;
- running: it is asked to stop. A long task calls `stop_if_revoked(self)` between chunks,
  which raises `TaskRevoked` (Celery's `Ignore`: no FAILURE, no Sentry event, no dead
  letter); the task cleans up on its way out, and once the exception has left it REVOKED is
  stored (`install()`'s `task_postrun` receiver), so a caller who sees REVOKED finds the
  cleanup done. A task that never asks runs to its end.

`revoke(..., terminate=True)` also broadcasts Celery's `revoke` with `terminate`, the hard stop
(SIGTERM to the prefork child running it; it cannot clean up). Workers refuse it unless
WORKER_REMOTE_CONTROL_ALLOW names both `revoke` and `terminate` (`common.worker`): opt-in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.exceptions import Ignore
from celery.signals import task_postrun

from common.celery_base import current_app
from common.settings import get_settings
from common.transport import locks, revocation
from common.transport.revocation import Revoked

__all__ = [
    "Revoked",
    "TaskRevoked",
    "check_at_start",
    "install",
    "is_revoked",
    "recent",
    "revoke",
    "stop_if_revoked",
]

logger = logging.getLogger(__name__)


class TaskRevoked(Ignore):
    """The task was revoked: Celery acknowledges the message and records nothing; `install()`'s
    receiver stores REVOKED once the exception has left the task."""


@dataclass
class Revocation:
    """What `revoke` did: the ids recorded, and each worker's answer to a hard stop."""

    task_ids: list[str]
    terminate: bool = False
    replies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def refused(self) -> dict[str, str]:
        """Workers that refused the hard stop: node name -> why."""
        out = {}
        for reply in self.replies:
            for node, answer in reply.items():
                if isinstance(answer, dict) and "error" in answer:
                    out[node] = str(answer["error"])
        return out


def retention() -> int:
    """Seconds a revoke is kept: TASK_REVOKE_RETENTION, at least as long as results."""
    s = get_settings()
    return max(int(s.task_revoke_retention), int(s.result_expires))


def revoke(task_ids: Iterable[str], *, terminate: bool = False, signal: str = "SIGTERM") -> Revocation:
    """Revoke `task_ids` for good (module docstring); `ValueError` for a string no task id is.

    With `terminate`, a running task's process is also sent `signal` by the worker that runs it,
    where the worker allows it; the answers are in `Revocation.replies` (1 s to answer).
    """
    ids = revocation.record(locks.redis_client(), task_ids, retention=retention(), terminate=terminate)
    done = Revocation(ids, terminate)
    if terminate and ids:
        replies = current_app().control.revoke(ids, terminate=True, signal=signal, reply=True, timeout=1.0)
        done.replies = list(replies or [])
    logger.info("Revoked %d task(s)%s", len(ids), " with terminate" if terminate else "")
    return done


def is_revoked(task_id: str) -> bool:
    return revocation.is_revoked(locks.redis_client(), task_id)


def recent(limit: int = 200) -> list[Revoked]:
    """The latest revokes still kept, newest first (the operations page)."""
    return revocation.recent(locks.redis_client(), limit)


def stop_if_revoked(task: Any) -> None:
    """Raise `TaskRevoked` if the running `task` was revoked: call it between chunks, and let
    the exception through (clean up in `except TaskRevoked: ...; raise` or `finally`).

    One EXISTS in Redis; called inline (no task id), it never stops anything.
    """
    task_id = task.request.id
    if task_id is not None and is_revoked(task_id):
        raise TaskRevoked("revoked while running; stopped at a checkpoint")


def check_at_start(task: Any, task_id: str, args: Any, kwargs: Any) -> None:
    """Every task's `before_start`: refuse one revoked while it waited in a worker's prefetch.

    The intake checked the message when the worker took it; a task starting within
    `revocation.RECHECK_AFTER` of that check is not asked again.
    """
    if task.request.is_eager:
        return  # called in-process (`apply()`): it never waited anywhere
    checked = getattr(task.request, revocation.CHECKED_HEADER, None)
    if isinstance(checked, float) and 0 <= time.monotonic() - checked < revocation.RECHECK_AFTER:
        return
    if task_id is None:
        return
    try:
        revoked = is_revoked(task_id)
    except redis.RedisError as exc:
        # Redis away at this instant: the intake's check at receipt stands, rather than
        # failing a task that may not need Redis at all (its ack waits for Redis anyway).
        logger.warning("Could not re-check %s for a revoke (%s); starting it", task_id, type(exc).__name__)
        return
    if revoked:
        raise TaskRevoked("revoked before it started")


def _store_revoked(sender: Any = None, task_id: str | None = None, retval: Any = None, **_: Any) -> None:
    """After a task ended by `TaskRevoked` (its cleanup done): store REVOKED, not FAILURE.

    Should the worker die before this, the message is redelivered and the intake stores it.
    """
    if isinstance(retval, TaskRevoked) and task_id and sender is not None:
        sender.backend.mark_as_revoked(task_id, str(retval), request=sender.request)
        logger.info("Stopped task %s[%s]: %s", sender.name, task_id, retval)


def install() -> None:
    """Store REVOKED for tasks that stop on a revoke (a worker service's hook, `common.process_hooks`)."""
    task_postrun.connect(_store_revoked, weak=False, dispatch_uid="common.cancellation")

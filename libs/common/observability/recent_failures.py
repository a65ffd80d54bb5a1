"""The last tasks that failed for good, kept in Redis for the admin's operations page.

Logs and Sentry hold every failure, but an operator on the admin wants the last few at a
glance, next to the queues. Each worker pushes one small JSON record per final failure
(Celery's `task_failure`; a retry sends `task_retry` instead, and a business outcome such
as a declined card is no failure: `common.observability.outcomes`) onto a capped list.
The record names the task and its exception and carries the exception's message masked
(`masking.mask_text`); never the task's arguments, which may name a person.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from redis.exceptions import RedisError

from common.masking import mask_text
from common.observability import failure_hooks
from common.observability.outcomes import is_outcome
from common.settings import get_settings
from common.transport.tls import redis_from_url

logger = logging.getLogger(__name__)

KEY = "jobs.failures.recent"
KEEP = 200  # records kept: enough for a page, small enough never to matter to Redis
MESSAGE_CHARS = 500  # an exception's text beyond this is cut (some quote whole responses)
_client: Any = None


@dataclass(frozen=True)
class Failure:
    """One task that failed for good: when, where, which task and exception (masked text)."""

    time: float  # Unix seconds
    service: str
    task: str
    task_id: str | None
    exception: str
    message: str


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails is still recorded
        return f"<unprintable {type(value).__name__}>"


def failure_of(sender: Any, task_id: str | None, exception: BaseException | None) -> Failure:
    """The record for a `task_failure`: the exception's text masked and cut, no arguments."""
    # Cut before anything else is done to it: an exception may quote a whole 100 KB argument.
    text = _text(exception)[: MESSAGE_CHARS * 4] if exception is not None else ""
    message = mask_text(" ".join(text.split()), MESSAGE_CHARS * 2)
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 1] + "…"
    app = getattr(sender, "app", None)
    return Failure(
        time=time.time(),
        service=str(getattr(app, "main", None) or "unknown"),
        task=str(getattr(sender, "name", None) or _text(sender)),
        task_id=task_id,
        exception=type(exception).__qualname__ if exception is not None else "unknown",
        message=message,
    )


def push(client: Any, failure: Failure, keep: int = KEEP) -> None:
    """Add `failure` as the newest record and drop all but the newest `keep` (one round trip)."""
    pipe = client.pipeline(transaction=True)
    pipe.lpush(KEY, json.dumps(asdict(failure)))
    pipe.ltrim(KEY, 0, keep - 1)
    pipe.execute()


def _parsed(raws: Iterable[bytes | str]) -> list[Failure]:
    out = []
    for raw in raws:
        try:
            out.append(Failure(**json.loads(raw)))
        except (ValueError, TypeError):  # a record of another shape (an older build): skipped
            continue
    return out


def recent(client: Any, limit: int = 50) -> list[Failure]:
    """The newest `limit` failures, newest first. Raises redis' errors (the caller says Redis is down)."""
    if limit <= 0:
        return []
    return _parsed(client.lrange(KEY, 0, min(limit, KEEP) - 1))


def _redis() -> Any:
    global _client
    if _client is None:
        s = get_settings()
        timeout = s.broker_socket_timeout
        _client = redis_from_url(s.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return _client


def record_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    """`task_failure` handler. Never raises: a Redis outage costs the record, not the worker."""
    if is_outcome(sender, exception):
        return
    try:
        push(_redis(), failure_of(sender, task_id, exception))
    except RedisError as exc:
        name = getattr(sender, "name", sender)
        why = type(exc).__name__
        logger.warning("Could not record failed task %s[%s] in %s: %s", name, task_id, KEY, why)
    except Exception:  # noqa: BLE001 - Celery would log this instead of the task's own failure
        logger.exception("Could not record failed task %s[%s]", getattr(sender, "name", sender), task_id)


def install() -> None:
    """Record every final task failure of this process (idempotent)."""
    failure_hooks.add(record_failure)

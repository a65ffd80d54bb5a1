"""Pausing a queue: kept in Redis, in force on every worker at once, until resumed.

During an incident (a payment gateway failing) an operator stops a queue's tasks from
starting without stopping its workers: `pause_queue` writes the queue into `jobs.paused`
(scripts.PAUSED) and from then on no worker's FETCH takes a message of it, because FETCH
checks that hash in the same atomic step that would pop the message. Running tasks finish;
waiting messages stay on their lists, and delayed ones falling due join them there. A worker
restarted meanwhile finds the pause in Redis, and with Redis persistence on so does a Redis
restart. `resume_queue` removes the entry and rings the queue's bell, so idle consumers
fetch at once (their one-second poll would within a second anyway).

This is the one way to pause: `manage.py queues` and the admin's operations page call it.
Celery's `cancel_consumer` is per worker, forgotten on restart, and refused by our remote
control.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from common.routing import SERVICES
from common.transport.broker import scripts

PAUSED = scripts.PAUSED
MAX_TEXT = 200  # characters kept of `by` and `reason`: a label, not a document


class UnknownQueueError(ValueError):
    """The name is no queue of the platform (common.routing.SERVICES)."""


@dataclass(frozen=True)
class Pause:
    """A queue's pause: when (unix seconds), by whom, and why (may be empty)."""

    queue: str
    since: float
    by: str
    reason: str = ""

    def seconds(self, now: float | None = None) -> float:
        """How long it has been paused (0 for an entry whose time cannot be read)."""
        if not self.since:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.since)


def check_queue(queue: str, known: Collection[str] = SERVICES) -> str:
    """`queue` if the platform has such a queue; else `UnknownQueueError` naming the ones there are."""
    if queue not in known:
        shown = queue if len(queue) <= 60 and queue.isprintable() else repr(queue[:60])
        raise UnknownQueueError(f"no queue named {shown}: the queues are {', '.join(sorted(known))}")
    return queue


def pause_queue(client: Any, queue: str, *, by: str, reason: str = "") -> tuple[Pause, bool]:
    """Pause `queue` for every worker. Returns the pause in force and whether this call made it
    (False: it was paused already, and the first pause's time and author are kept)."""
    check_queue(queue)
    entry = {"since": round(time.time(), 3), "by": _label(by) or "?", "reason": _label(reason)}
    if client.hsetnx(PAUSED, queue, json.dumps(entry)):
        return _read(queue, json.dumps(entry)), True
    current = client.hget(PAUSED, queue)
    return _read(queue, current), False


def resume_queue(client: Any, queue: str) -> Pause | None:
    """Resume `queue` and wake its idle consumers; the pause it ended, or None if it was not paused.

    A name that is no queue of the platform is refused, unless it is paused (an entry written
    by hand can still be removed).
    """
    if queue not in SERVICES and client.hget(PAUSED, queue) is None:
        check_queue(queue)  # raises: no such queue, and nothing of that name is paused
    pipe = client.pipeline(transaction=True)
    pipe.hget(PAUSED, queue)
    pipe.hdel(PAUSED, queue)
    # Ring its bell as a publish does: one token, so one idle consumer fetches now, and the
    # fetch rings again while messages are left (scripts.FETCH).
    bell = scripts.BELL_PREFIX + queue
    pipe.lpush(bell, 1)
    pipe.ltrim(bell, 0, 0)
    current, *_ = pipe.execute()
    return None if current is None else _read(queue, current)


def paused_queues(client: Any) -> dict[str, Pause]:
    """Every paused queue -> its pause, sorted by name. An unreadable entry still counts as a
    pause (FETCH honours it), with time 0 and `by` '?'."""
    return paused_from(client.hgetall(PAUSED))


def paused_from(entries: Any) -> dict[str, Pause]:
    """`paused_queues` from a reply of HGETALL PAUSED (for a caller that pipelines it)."""
    found = {_text(queue): _read(_text(queue), raw) for queue, raw in (entries or {}).items()}
    return dict(sorted(found.items()))


def _read(queue: str, raw: Any) -> Pause:
    try:
        entry = json.loads(_text(raw))
        since = float(entry["since"])
        if since != since or since in (float("inf"), float("-inf")):
            since = 0.0
        return Pause(queue, since, _label(entry.get("by")) or "?", _label(entry.get("reason")))
    except (ValueError, TypeError, KeyError, AttributeError):
        return Pause(queue, 0.0, "?", "(unreadable entry)")


def _label(value: Any) -> str:
    """A short printable one-line text of `value` ('' for None)."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:MAX_TEXT]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

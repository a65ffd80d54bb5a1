"""Revoked task ids, kept in the broker's Redis so a cancellation outlives every worker's memory.

Celery's revoke is a broadcast each worker keeps in memory: one sent while the workers are down,
or for a task waiting in the delayed set, is lost and the task runs (celery#8888, celery#4300).
Here a revoke is a key per task id (`jobs.revoked:<id>`), so checking a message costs one
EXISTS, plus an index (`jobs.revoked`, a sorted set of id -> time) the operations page lists;
both are written in one MULTI and kept for the retention (at least RESULT_EXPIRES).

Who reads it: the intake on receipt (`common.transport.intake`), a task's start when it waited
in a worker's prefetch, and a running task between chunks (`common.cancellation`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "jobs.revoked:"
INDEX = "jobs.revoked"
# Celery's ids are 36 characters; a longer "id" (hostile or broken) is never recorded, so it
# is never looked up either: a megabyte header costs no megabyte key.
MAX_ID_LENGTH = 200
# A task that starts this soon after the intake found it not revoked is not asked again: a
# revoke landing in between is a revoke of a task already under way (one EXISTS per task).
RECHECK_AFTER = 0.1
# The header the intake stamps with the time (monotonic, this host) it checked the message.
CHECKED_HEADER = "x_revoke_checked"


@dataclass(frozen=True)
class Revoked:
    task_id: str
    at: float  # when it was revoked (epoch seconds)
    terminate: bool = False


def valid_id(task_id: object) -> bool:
    """A task id a revoke may name: a non-empty string of printable characters, not too long."""
    return (
        isinstance(task_id, str)
        and 0 < len(task_id) <= MAX_ID_LENGTH
        and task_id.isprintable()
        and not any(c.isspace() for c in task_id)
    )


def record(
    client: Any, task_ids: Iterable[str], *, retention: int, terminate: bool = False, now: float | None = None
) -> list[str]:
    """Keep `task_ids` revoked for `retention` seconds; returns them. Refuses an invalid id."""
    ids = list(dict.fromkeys(task_ids))
    bad = [i for i in ids if not valid_id(i)]
    if bad:
        raise ValueError(f"not a task id: {bad[0]!r}")
    if not ids:
        return []
    now = time.time() if now is None else now
    value = json.dumps({"at": now, "terminate": terminate})
    with client.pipeline(transaction=True) as pipe:
        for task_id in ids:
            pipe.set(KEY_PREFIX + task_id, value, ex=retention)
        pipe.zadd(INDEX, {task_id: now for task_id in ids})
        pipe.zremrangebyscore(INDEX, "-inf", now - retention)  # the index forgets with the keys
        pipe.expire(INDEX, retention)
        pipe.execute()
    return ids


def is_revoked(client: Any, task_id: object) -> bool:
    """True if a revoke of `task_id` is kept (one EXISTS; none for an id no revoke could name)."""
    return valid_id(task_id) and bool(client.exists(KEY_PREFIX + str(task_id)))


def recent(client: Any, limit: int = 200) -> list[Revoked]:
    """The last `limit` revokes still kept, newest first."""
    listed = client.zrevrange(INDEX, 0, max(limit, 1) - 1, withscores=True)
    if not listed:
        return []
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i, _ in listed]
    values = client.mget([KEY_PREFIX + i for i in ids])
    out = []
    for task_id, value in zip(ids, values, strict=True):
        if value is None:
            continue  # expired (or withdrawn) since the index was trimmed
        try:
            fields = json.loads(value)
            out.append(Revoked(task_id, float(fields["at"]), bool(fields.get("terminate"))))
        except (ValueError, TypeError, KeyError):
            continue
    return out

"""Unique jobs in the fast tier: the stub broker's Python twin of the publish step's Lua.

The stub transport (`devtools.testing.jobs`) runs no Lua, so a unique task's message (its
`x_unique` header, added by `common.transport.unique_jobs` as in production) is judged here
against `jobs.redis` with the same rules as `common.transport.broker.uniqueness.UNIQUE_PUT`:
a duplicate is not queued (the caller's AsyncResult points at the task holding the key), a
debounced message still waiting replaces the one before it, a retry always goes. The worker's
release (`RELEASE`, run in `task_prerun`/`task_postrun`) gets its twin from `MemoryRedis`.
Leases are kept as TTLs in `MemoryRedis` too; a debounce's delay is not (run_all runs at once).
"""

from __future__ import annotations

from typing import Any


def admit(jobs: Any, message: Any, envelope: dict[str, Any]) -> bool:
    """True to queue `message` (a `jobs.Message`); False for a duplicate, left out."""
    from common.transport.broker import uniqueness

    unique = uniqueness.header_of(envelope)
    if unique is None:
        return True
    redis, key, task_id = jobs.redis, unique.key, envelope["headers"]["id"]
    lease = unique.lease_ms
    held = redis.get(key)
    holder = held.decode() if held is not None else None
    if unique.retry:
        if holder == task_id:
            redis.set(key, task_id, px=lease)
        return True
    if holder is not None and holder != task_id:
        waiting = jobs.unique_pending.get(key)
        if not unique.debounce or waiting is None or waiting not in jobs.messages:
            uniqueness._remember(task_id, holder)  # what the caller's AsyncResult follows
            return False
        jobs.messages.remove(waiting)  # the last of a burst wins
    redis.set(key, task_id, px=lease)
    if unique.debounce:
        jobs.unique_pending[key] = message
    return True


def release(keys: list[str], args: list[Any], client: Any = None) -> int:
    """`common.transport.unique_jobs.RELEASE` on a `MemoryRedis` (`client`)."""
    key, pending = keys
    task_id, what = str(args[0]), str(args[1])
    held = client.get(key)
    if held is None or held.decode() != task_id:
        return 0
    if what == "release":
        client.delete(key, pending)
    else:
        client.set(key, task_id, px=int(what))
    return 1

"""A running task's message, back to the delayed set until a given time: one Lua step.

With late acks the message of a running task is in its owner's in-flight hash. `DEFER`
moves that entry, unchanged, to the delayed set (`scripts.DELAYED`) due at the given time,
in one step: the message is never in both places nor in neither. The owner forgets the tag,
so Celery's acknowledgement after the task returns (`Ignore`) touches nothing in Redis and
frees the prefetch slot; the heartbeat's tick puts the message back on its queue, at the
consuming end, when it is due. Its retry count is unchanged: a wait is not a retry.

Used for rate limits (`common.transport.limited_tasks`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Ignore

from common.transport.broker import ownership, scripts

logger = logging.getLogger(__name__)
_scripts: dict[str, Any] = {}  # owner id -> its registered DEFER

# KEYS[1]: the owner's in-flight hash; KEYS[2]: the delayed set. ARGV[1]: the tag; ARGV[2]:
# due time (ms). Returns 1 if moved, 0 if the hash no longer held it (judged dead meanwhile:
# the message went back on its queue already).
DEFER = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], entry)
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


def defer(task: Any, due_ms: int, why: str) -> None:
    """Send the running `task`'s message back to the delayed set until `due_ms`; raise `Ignore`.

    Returns without raising when this process holds no message for the task (it runs in a
    prefork child, eagerly, or was called directly): the caller decides what to do then.
    """
    request = task.request
    owner = ownership.current_owner()
    tag = owner.holding(request.id) if owner is not None and request.id else None
    if owner is None or tag is None:
        return
    script = _scripts.get(owner.id)
    if script is None:
        script = _scripts[owner.id] = owner.client.register_script(DEFER)
    moved = script(keys=[owner.inflight_key, scripts.DELAYED], args=[tag, int(due_ms)])
    owner.forget(tag)
    if moved:
        logger.info("Task %s[%s] waits in the delayed set: %s", task.name, request.id, why)
    else:
        logger.warning(
            "Task %s[%s] was over a rate limit, but its message was no longer held by this worker "
            "(it missed its heartbeats and the message was requeued)",
            task.name,
            request.id,
        )
    raise Ignore()

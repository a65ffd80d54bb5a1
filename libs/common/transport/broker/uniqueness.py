"""Unique jobs, in the publish step: the unique key is taken in the same Lua call as the publish.

A message of a task whose contract declares `unique` carries the header `x_unique` (added
where every publish passes, `common.transport.unique_jobs`): its key, how long the key may
be held (the lease, ms), whether it is a retry, and whether it is debounced. The transport's
`_put` hands such a message here, and `UNIQUE_PUT` then, in one step:

- publishes it and takes the key for its task id when the key is free (or already its own);
- drops it when another task id holds the key (a duplicate: nothing is published);
- for a debounced task, replaces the message still waiting in the delayed set with this one
  (the last of a burst wins), keeping the key;
- for a retry, always publishes (a retry is never a duplicate) and renews the lease if the
  key is still its own.

Every key is written with the lease as its TTL, so a key whose holder was killed runs out.
Because the check and the publish are one step, no path around it exists: `delay`,
`apply_async`, `send_many`, the outbox relay, beat and replay all end in `_put`.

Keys: `jobs.unique:<task>:<hash>` -> the holding task id; `jobs.unique.pending:<task>:<hash>`
-> the delayed-set member of a debounced message still waiting (so it can be replaced).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from redis.commands.core import Script

from common.transport.broker import scripts

logger = logging.getLogger(__name__)

HEADER = "x_unique"
KEY_PREFIX = "jobs.unique:"
PENDING_PREFIX = "jobs.unique.pending:"
MAX_LEASE_MS = 30 * 24 * 3600 * 1000
_OUTCOMES_KEPT = 256

# KEYS[1] unique key; KEYS[2] queue list; KEYS[3] its bell; KEYS[4] pending key; KEYS[5] the
# delayed set. ARGV[1] task id; ARGV[2] lease ms; ARGV[3] the message; ARGV[4] due time ms
# ('' to queue it now); ARGV[5] '1' for a retry; ARGV[6] '1' to debounce.
# Returns 1 when queued (the common case: the cheapest reply to read), else {outcome, holder}:
# 'duplicate' (nothing published) or 'replaced' (a waiting debounced message was removed for
# this one), and the task id that held the key.
UNIQUE_PUT = """
local function publish()
  if ARGV[4] == '' then
    redis.call('LPUSH', KEYS[2], ARGV[3])
    if redis.call('LLEN', KEYS[3]) == 0 then redis.call('LPUSH', KEYS[3], '1') end
    return nil
  end
  local member = KEYS[2] .. '\\n' .. ARGV[3]
  redis.call('ZADD', KEYS[5], tonumber(ARGV[4]), member)
  return member
end
local held = redis.pcall('GET', KEYS[1])
if type(held) ~= 'string' then held = nil end
if ARGV[5] == '1' then
  if held == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  publish()
  return 1
end
local outcome = 'queued'
if held and held ~= ARGV[1] then
  if ARGV[6] ~= '1' then return {'duplicate', held} end
  local pending = redis.pcall('GET', KEYS[4])
  if type(pending) ~= 'string' then return {'duplicate', held} end
  local removed = redis.pcall('ZREM', KEYS[5], pending)
  if removed ~= 1 then return {'duplicate', held} end
  outcome = 'replaced'
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local member = publish()
if member and ARGV[6] == '1' then redis.call('SET', KEYS[4], member, 'PX', ARGV[2]) end
if outcome == 'queued' then return 1 end
return {outcome, held}
"""

_script: Script | None = None
_state = threading.local()


def header_of(message: dict[str, Any]) -> dict[str, Any] | None:
    """The message's `x_unique` header when it is well formed, else None (published plainly)."""
    headers = message.get("headers")
    if not isinstance(headers, dict) or not isinstance(headers.get("id"), str):
        return None
    unique = headers.get(HEADER)
    if not isinstance(unique, dict):
        return None
    key, lease = unique.get("key"), unique.get("lease_ms")
    if not (isinstance(key, str) and key.startswith(KEY_PREFIX) and len(key) <= 512):
        return None
    if not (isinstance(lease, int) and not isinstance(lease, bool) and 0 < lease <= MAX_LEASE_MS):
        return None
    return unique


def pending_key(key: str) -> str:
    return PENDING_PREFIX + key[len(KEY_PREFIX) :]


def put(
    channel: Any, message: dict[str, Any], list_key: str, bell: str, payload: str, due: int | None
) -> None:
    """Publish `message` (already `payload`) under its unique key, in one Lua step."""
    unique = header_of(message)
    assert unique is not None  # the transport asks header_of first
    headers = message["headers"]
    task_id: str = headers["id"]
    keys = [unique["key"], list_key, bell, pending_key(unique["key"]), scripts.DELAYED]
    args = [
        task_id,
        unique["lease_ms"],
        payload,
        "" if due is None else due,
        "1" if unique.get("retry") is True else "0",
        "1" if unique.get("debounce") is True and due is not None else "0",
    ]
    batch = channel._round_trip_pipeline()
    if batch is not None:  # pipelined (send_many, the relay): the outcome is not read back
        _script_on(batch)(keys=keys, args=args, client=batch)
        return
    with channel.conn_or_acquire() as client:
        reply = _script_on(client)(keys=keys, args=args, client=client)
    if not isinstance(reply, list):
        return  # queued
    outcome, holder = _text(reply[0]), _text(reply[1])
    if outcome == "duplicate":
        logger.info("%s[%s] not queued: %s holds its unique key", headers.get("task"), task_id, holder)
        _remember(task_id, holder)
    elif outcome == "replaced":
        logger.info("%s[%s] replaces the waiting %s (debounced)", headers.get("task"), task_id, holder)


def duplicate_of(task_id: str) -> str | None:
    """The task id already holding the key when this thread's publish of `task_id` was a
    duplicate (what the caller's AsyncResult should point at), once; else None."""
    outcomes: OrderedDict[str, str] | None = getattr(_state, "outcomes", None)
    if not outcomes:
        return None
    return outcomes.pop(task_id, None)


def _remember(task_id: str, holder: str) -> None:
    outcomes: OrderedDict[str, str] | None = getattr(_state, "outcomes", None)
    if outcomes is None:
        outcomes = _state.outcomes = OrderedDict()
    outcomes[task_id] = holder
    while len(outcomes) > _OUTCOMES_KEPT:  # a raw send_task never asks: keep it bounded
        outcomes.popitem(last=False)


def _script_on(client: Any) -> Script:
    global _script
    if _script is None:
        _script = client.register_script(UNIQUE_PUT)
    return _script


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

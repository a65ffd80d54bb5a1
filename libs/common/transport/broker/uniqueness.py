"""Unique jobs, in the publish step: the unique key is taken in the same Lua call as the publish.

A message of a task whose contract declares `unique` carries the header `x_unique` (added
where every publish passes, `common.transport.unique_jobs`), `[key, lease_ms, mode]`: its key,
how long the key may be held (the lease), and its mode: `s` (held until start) or `f` (until
finish), then `r` for a retry or `d` for a debounced send (a short list: every unique publish
encodes it). The transport's
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
from typing import Any, NamedTuple

from redis.commands.core import Script

from common.transport.broker import scripts

logger = logging.getLogger(__name__)

HEADER = "x_unique"
KEY_PREFIX = "jobs.unique:"
PENDING_PREFIX = "jobs.unique.pending:"
MAX_LEASE_MS = 30 * 24 * 3600 * 1000
_OUTCOMES_KEPT = 256

# KEYS[1] unique key; KEYS[2] queue list; KEYS[3] its bell. ARGV[1] task id; ARGV[2] lease
# ms; ARGV[3] the message; ARGV[4] due time ms ('' to queue it now); ARGV[5] (optional) 'r'
# for a retry, 'd' to debounce. The pending key (the unique key's name under PENDING_PREFIX)
# and the delayed set are fixed names, as in the transport's other scripts: fewer arguments
# to send on every unique publish.
# Returns 1 when queued (the common case: the cheapest reply to read), else {outcome, holder}:
# 'duplicate' (nothing published) or 'replaced' (a waiting debounced message was removed for
# this one), and the task id that held the key. A free key costs one SET NX: the holder is
# read only when it is taken.
UNIQUE_PUT = (
    """
local DELAYED = '"""
    + scripts.DELAYED
    + """'
local function pending()
  return '"""
    + PENDING_PREFIX
    + """' .. string.sub(KEYS[1], """
    + str(len(KEY_PREFIX) + 1)
    + """)
end
local flag = ARGV[5] or ''
local function publish()
  if ARGV[4] == '' then
    redis.call('LPUSH', KEYS[2], ARGV[3])
    if redis.call('LLEN', KEYS[3]) == 0 then redis.call('LPUSH', KEYS[3], '1') end
    return nil
  end
  local member = KEYS[2] .. '\\n' .. ARGV[3]
  redis.call('ZADD', DELAYED, tonumber(ARGV[4]), member)
  return member
end
if flag == 'r' then
  if redis.pcall('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  publish()
  return 1
end
local outcome, held = 'queued', nil
if not redis.pcall('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  held = redis.pcall('GET', KEYS[1])
  if type(held) ~= 'string' then held = nil end
  if held and held ~= ARGV[1] then
    if flag ~= 'd' then return {'duplicate', held} end
    local waiting = redis.pcall('GET', pending())
    if type(waiting) ~= 'string' then return {'duplicate', held} end
    if redis.pcall('ZREM', DELAYED, waiting) ~= 1 then return {'duplicate', held} end
    outcome = 'replaced'
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local member = publish()
if member and flag == 'd' then redis.call('SET', pending(), member, 'PX', ARGV[2]) end
if outcome == 'queued' then return 1 end
return {outcome, held}
"""
)

_script: Script | None = None
_state = threading.local()


class Header(NamedTuple):
    """A well-formed `x_unique` header."""

    key: str
    lease_ms: int
    until: str  # "start" or "finish"
    retry: bool
    debounce: bool


def encode(key: str, lease_ms: int, until: str, *, retry: bool = False, debounce: bool = False) -> list[Any]:
    """The `x_unique` header's value."""
    return [key, lease_ms, ("f" if until == "finish" else "s") + ("r" if retry else "d" if debounce else "")]


def header_of(message: dict[str, Any]) -> Header | None:
    """The message's `x_unique` header when it is well formed, else None (published plainly)."""
    headers = message.get("headers")
    if not isinstance(headers, dict) or not isinstance(headers.get("id"), str):
        return None
    unique = headers.get(HEADER)
    if not isinstance(unique, list) or len(unique) != 3:
        return None
    key, lease, mode = unique
    if not (isinstance(key, str) and key.startswith(KEY_PREFIX) and len(key) <= 512):
        return None
    if not (isinstance(lease, int) and not isinstance(lease, bool) and 0 < lease <= MAX_LEASE_MS):
        return None
    if mode not in _MODES:
        return None
    return Header(key, lease, "finish" if mode[0] == "f" else "start", mode[1:] == "r", mode[1:] == "d")


_MODES = frozenset({"s", "f", "sr", "fr", "sd", "fd"})


def pending_key(key: str) -> str:
    return PENDING_PREFIX + key[len(KEY_PREFIX) :]


def put(
    channel: Any,
    message: dict[str, Any],
    unique: Header,
    list_key: str,
    bell: str,
    payload: str,
    due: int | None,
) -> None:
    """Publish `message` (already `payload`) under its unique key, in one Lua step."""
    headers = message["headers"]
    task_id: str = headers["id"]
    args: list[Any] = [task_id, unique.lease_ms, payload, "" if due is None else due]
    if unique.retry:
        args.append("r")
    elif unique.debounce and due is not None:
        args.append("d")
    keys = [unique.key, list_key, bell]
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

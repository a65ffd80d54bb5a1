"""Batches in Redis: members counted once by task id, callbacks published once, in Lua.

Celery's chord counts a part into its chord after the part's result is stored and before its
ack, in a second step: a worker killed between them runs the part again and counts it twice
(the chord fires early). Here a member's count is in the same Lua step as its final result
(and, for SUCCESS, its ack: `common.transport.results`), or as its dead letter
(`dead_letter_store`), and is idempotent by task id: a member that runs twice counts once.
When the batch is closed and its last member is counted, that same step pushes the callback
messages, encoded when the batch was created, onto their queues and rings their bells: a
callback is published exactly once, atomically with the last count.

Keys (under `jobs.batch:<id>`, each expiring TTL after the batch's last add or close):
- `jobs.batch:<id>`          hash: total, succeeded, failed, closed, fired, died, parent,
                             description, created, and per callback `<name>.queue`,
                             `<name>.head`, `<name>.tail`, `<name>.id`
- `jobs.batch:<id>:members`  hash, task id -> '' (pending), 's' (succeeded), 'f' (failed):
                             only registered members count, each once
- `jobs.batch:<id>:failed`   list of the failed members' task ids, in the order they failed

A member's message carries only the batch id, in the `x_batch` header (flat encoding: its
size does not grow with the batch). The callback's first argument is the batch's status,
a `contracts.declare.BatchStatus`, built by the Lua step that fires it: its message is
stored as the JSON before and after that argument (`head`, `tail`), and the body is plain
JSON (no base64) so Lua can splice it in.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, cast

from common.transport.broker import scripts

HEADER = "x_batch"
PREFIX = "jobs.batch:"
TTL = 7 * 24 * 3600  # seconds a batch's state is kept after its last add or close
CALLBACKS = ("on_complete", "on_success", "on_death")  # in the order they are pushed
FAILED_IDS_IN_STATUS = 1000  # failed ids a callback's argument lists; `status()` has all
_ID = re.compile(r"^[0-9a-f]{32}$")
_MARK = "@@jobs-batch-status@@"

# Shared Lua: count a member once (`batch_count`), fire a closed batch whose members have all
# ended (`batch_fire`), and the status a callback receives. Keys are built here from the batch
# id (a single Redis: the broker's, which holds the queues the callbacks go to).
_LUA = (
    """
local BATCH_PREFIX = '"""
    + PREFIX
    + """'
local BATCH_FAILED_IDS = """
    + str(FAILED_IDS_IN_STATUS)
    + """
local function batch_int(v) return tonumber(v) or 0 end
local function batch_status(id, key)
  local b = redis.call('HMGET', key, 'total', 'succeeded', 'failed')
  local ids = redis.call('LRANGE', key .. ':failed', 0, BATCH_FAILED_IDS - 1)
  local quoted = {}
  for i, t in ipairs(ids) do quoted[i] = cjson.encode(t) end
  return string.format('{"batch_id":%s,"total":%d,"succeeded":%d,"failed":%d,"failed_ids":[%s]}',
    cjson.encode(id), batch_int(b[1]), batch_int(b[2]), batch_int(b[3]), table.concat(quoted, ','))
end
local function batch_push(key, name, status, bell_prefix)
  local c = redis.call('HMGET', key, name .. '.queue', name .. '.head', name .. '.tail')
  if not c[1] then return 0 end
  local escaped = string.sub(cjson.encode(status), 2, -2)
  redis.call('LPUSH', c[1], c[2] .. escaped .. c[3])
  local bell = bell_prefix .. c[1]
  if redis.call('LLEN', bell) == 0 then redis.call('LPUSH', bell, '1') end
  return 1
end
local batch_count
local function batch_fire(id, bell_prefix)
  local key = BATCH_PREFIX .. id
  local b = redis.call('HMGET', key, 'total', 'succeeded', 'failed', 'closed', 'fired', 'parent')
  local total, ok, bad = batch_int(b[1]), batch_int(b[2]), batch_int(b[3])
  if b[4] ~= '1' or b[5] == '1' or ok + bad < total then return 0 end
  redis.call('HSET', key, 'fired', '1')
  local status = batch_status(id, key)
  batch_push(key, 'on_complete', status, bell_prefix)
  if bad == 0 then batch_push(key, 'on_success', status, bell_prefix) end
  if b[6] and b[6] ~= '' then
    local outcome = 's'
    if bad > 0 then outcome = 'f' end
    batch_count(b[6], id, outcome, bell_prefix)
  end
  return 1
end
batch_count = function(id, member, outcome, bell_prefix)
  local key = BATCH_PREFIX .. id
  if redis.call('HGET', key .. ':members', member) ~= '' then return 0 end
  redis.call('HSET', key .. ':members', member, outcome)
  if outcome == 's' then
    redis.call('HINCRBY', key, 'succeeded', 1)
  else
    redis.call('HINCRBY', key, 'failed', 1)
    redis.call('RPUSH', key .. ':failed', member)
  end
  batch_fire(id, bell_prefix)
  return 1
end
-- A member was dead-lettered: it counts as failed, and the batch's on_death fires once.
local function batch_dead(id, member, bell_prefix)
  local key = BATCH_PREFIX .. id
  if redis.call('HEXISTS', key .. ':members', member) == 0 then return 0 end
  batch_count(id, member, 'f', bell_prefix)
  if redis.call('HSETNX', key, 'died', '1') == 1 then
    batch_push(key, 'on_death', batch_status(id, key), bell_prefix)
  end
  return 1
end
"""
)

# KEYS[1] the batch hash; ARGV[1] the batch id, ARGV[2..] new members' task ids. Registers
# them (a pending member each, counted into `total`) unless the batch has fired: a batch whose
# callbacks went out takes no more members. Returns how many were new, or -1 (fired, or gone).
ADD = (
    _LUA
    + """
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 or redis.call('HGET', key, 'fired') == '1' then return -1 end
local new = 0
for i = 2, #ARGV do
  new = new + redis.call('HSETNX', key .. ':members', ARGV[i], '')
end
redis.call('HINCRBY', key, 'total', new)
local ttl = redis.call('TTL', key)
if ttl > 0 then
  redis.call('EXPIRE', key .. ':members', ttl)
  redis.call('EXPIRE', key .. ':failed', ttl)
end
return new
"""
)

# KEYS[1] the batch hash; ARGV[1] the batch id, ARGV[2] bell prefix, ARGV[3] TTL. Closes the
# batch: from now on, the count that ends its last member fires it, and if every member has
# already ended, this step does. Returns 1 if it fired now, 0 if not, -1 if the batch is gone.
CLOSE = (
    _LUA
    + """
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return -1 end
redis.call('HSET', key, 'closed', '1')
for _, k in ipairs({key, key .. ':members', key .. ':failed'}) do redis.call('EXPIRE', k, ARGV[3]) end
return batch_fire(ARGV[1], ARGV[2])
"""
)


def store_and_count(store_lua: str) -> str:
    """The result store `store_lua` (returns 1 if it wrote, 0 if a SUCCESS was already there),
    then the member's count, in one script.

    ARGV[4] batch id, ARGV[5] task id, ARGV[6] 's' or 'f', ARGV[7] bell prefix (ARGV[3], the
    in-flight tag, is always passed, '' when nothing is settled). A member whose SUCCESS is
    already stored counts as succeeded whatever this store says. The count runs under pcall:
    nothing about a batch may fail a result's store.
    """
    return (
        _LUA
        + "local function store()\n"
        + store_lua
        + "\nend\nlocal stored = store()\nlocal outcome = ARGV[6]\n"
        + "if stored == 0 then outcome = 's' end\n"
        + "pcall(batch_count, ARGV[4], ARGV[5], outcome, ARGV[7])\nreturn stored\n"
    )


def add_and_count_dead(add_lua: str) -> str:
    """The dead-letter store `add_lua`, then the member's count as failed and the batch's
    on_death, in one script: ARGV[9] batch id, ARGV[10] task id, ARGV[11] bell prefix (ARGV[8],
    the in-flight tag, is always passed)."""
    return (
        _LUA
        + "local function add()\n"
        + add_lua
        + "\nend\nlocal dropped = add()\n"
        + "pcall(batch_dead, ARGV[9], ARGV[10], ARGV[11])\nreturn dropped\n"
    )


def new_id() -> str:
    return uuid.uuid4().hex


def valid_id(value: Any) -> str | None:
    """`value` if it is a batch id as `new_id` makes them, else None: a header is untrusted."""
    return value if isinstance(value, str) and _ID.match(value) else None


def batch_of(request: Any) -> str | None:
    """The batch a running task's request belongs to (its `x_batch` header), or None."""
    if request is None:
        return None
    value = getattr(request, HEADER, None)
    if value is None:
        headers = getattr(request, "headers", None)
        value = headers.get(HEADER) if isinstance(headers, dict) else None
    return valid_id(value)


def batch_of_raw(raw: bytes | str, limit: int = 4 * 1024 * 1024) -> str | None:
    """The batch of a raw queue item (a dead letter), or None; any bytes are survived."""
    if len(raw) > limit:
        return None
    try:
        headers = json.loads(raw).get("headers")
        return valid_id(headers.get(HEADER)) if isinstance(headers, dict) else None
    except Exception:  # noqa: BLE001 - not JSON, not an envelope: no batch
        return None


def callback_message(
    name: str, queue: str, args: list[Any], kwargs: dict[str, Any], task_id: str
) -> tuple[str, str]:
    """A Celery protocol-2 message calling `name(<status>, *args, **kwargs)`, split around the
    status argument: the Lua step that fires the batch joins head + escaped status + tail."""
    body = json.dumps(
        [[_MARK, *args], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": name,
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "timelimit": [None, None],
            "eta": None,
            "expires": None,
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    text = json.dumps(envelope)
    mark = json.dumps(json.dumps(_MARK))[1:-1]  # as it appears inside the body string
    head, found, tail = text.partition(mark)
    if not found or mark in tail:
        raise ValueError("the batch status placeholder appears in a callback's arguments")
    return head, tail


def key(batch_id: str) -> str:
    return PREFIX + batch_id


def read_status(client: Any, batch_id: str) -> dict[str, Any] | None:
    """The batch's state as stored (`common.batches.status` is the public reading), or None."""
    k = key(batch_id)
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(k).lrange(k + ":failed", 0, -1)
    fields, failed_ids = cast("list[Any]", pipe.execute())
    if not fields:
        return None
    f = {a.decode(): b.decode() for a, b in fields.items()}
    total, succeeded, failed = (int(f.get(n, 0)) for n in ("total", "succeeded", "failed"))
    return {
        "batch_id": batch_id,
        "description": f.get("description", ""),
        "total": total,
        "pending": total - succeeded - failed,
        "succeeded": succeeded,
        "failed": failed,
        "failed_ids": [i.decode() for i in failed_ids],
        "closed": f.get("closed") == "1",
        "fired": f.get("fired") == "1",
        "dead": f.get("died") == "1",
        "parent": f.get("parent") or None,
        "callbacks": {n: f[f"{n}.id"] for n in CALLBACKS if f"{n}.id" in f},
    }


BELL_PREFIX = scripts.BELL_PREFIX

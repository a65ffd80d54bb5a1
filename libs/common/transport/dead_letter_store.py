"""The dead-letter store: what a worker could not run, kept in Redis with the reason why.

One sorted set per queue (entry id -> time) and one hash of entries, written by one Lua
call that also trims each queue's set to its cap and drops entries past the retention, so
a flood of poison messages cannot fill Redis. An entry keeps the raw message exactly as it
was taken off the queue, so an operator can read it, fix what caused it, and replay it.

It lives with the transport, which writes it (a message it cannot admit); reading, replaying
and the failure receiver live above, in `common.deadletters`, which re-exports its names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis
from celery.utils.dispatch import Signal

from common.transport import batches

# Sent once a dead letter is stored, where it was stored (a worker's main process for what
# it could not run, the pool process for a task that failed for good): metrics count it.
dead_lettered = Signal(name="dead_lettered", providing_args=["queue", "reason"])

ENTRIES = "jobs.dead.entries"
QUEUES = "jobs.dead.queues"
QUEUE_PREFIX = "jobs.dead:"

DEFAULT_CAP = 10_000
DEFAULT_RETENTION = 7 * 24 * 3600

# Why a message was dead-lettered (the `reason` field; filters use these names).
UNDECODABLE = "undecodable"  # not JSON, or not kombu's envelope
MALFORMED = "malformed"  # body or headers not what Celery's protocol 2 requires
CONTENT_TYPE = "content-type"  # anything but JSON (pickle, yaml, xml, ...)
UNKNOWN_TASK = "unknown-task"  # no task of that name on this queue's service
INVALID_ARGUMENTS = "invalid-arguments"  # arguments that do not fit the task's contract
TOO_LARGE = "too-large"  # over TASK_MAX_PAYLOAD_BYTES
FAILED = "failed"  # the task failed for good (retries exhausted or unexpected error)
CRASHED_CONSUMER = "crashed-consumer"  # the worker's message handling raised
DUPLICATE = "duplicate"  # not dead-lettered: a second copy of an outbox message, dropped
REVOKED = "revoked"  # not dead-lettered: an operator cancelled it; acked, its state REVOKED
REQUEUE_LIMIT = "requeue-limit"  # went back on its queue more than TASK_MAX_REQUEUES times
REASONS = (
    UNDECODABLE,
    MALFORMED,
    CONTENT_TYPE,
    UNKNOWN_TASK,
    INVALID_ARGUMENTS,
    TOO_LARGE,
    FAILED,
    CRASHED_CONSUMER,
    REQUEUE_LIMIT,
)
# Refusals that are no fault: the message is acknowledged and dropped, never dead-lettered.
DROPPED = frozenset({DUPLICATE, REVOKED})

SIZES = "jobs.dead.sizes"  # entry id -> bytes it takes
BYTES = "jobs.dead.bytes"  # queue -> bytes its entries take

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# An entry's raw message over this is kept as its head, its size and its digest: a 98 MB
# message kept whole filled Redis (about ten fill a 1 GB server) and blocked it to read.
DEFAULT_MAX_ENTRY_BYTES = 2 * 1024 * 1024 + 64 * 1024
HEAD_BYTES = 4096

_DROP = """
local function drop(id)
  local size = tonumber(redis.call('HGET', KEYS[4], id) or '0')
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[4], id)
  if size == 0 then return tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0') end
  return redis.call('HINCRBY', KEYS[5], ARGV[1], 0 - size)
end
"""

# KEYS[1] entries hash, KEYS[2] the queue's zset, KEYS[3] queues set, KEYS[4] sizes hash,
# KEYS[5] bytes hash, KEYS[6] (optional) the in-flight hash holding the message. ARGV: queue,
# id, entry JSON, time (ms), cap, retention (ms), byte cap, in-flight tag. Recording and
# releasing the message is one step: never lost. The queue's entries are then trimmed to
# the retention, the count cap and the byte cap, oldest first (the newest is always kept).
_ADD = (
    _DROP
    + """
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[2], #ARGV[3])
local total = redis.call('HINCRBY', KEYS[5], ARGV[1], #ARGV[3])
if KEYS[6] then redis.call('HDEL', KEYS[6], ARGV[8]) end
local dropped = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[4]) - tonumber(ARGV[6]))) do
  total = drop(id)
  dropped = dropped + 1
end
local count = redis.call('ZCARD', KEYS[2])
while count > 1 and (count > tonumber(ARGV[5]) or total > tonumber(ARGV[7])) do
  total = drop(redis.call('ZRANGE', KEYS[2], 0, 0)[1])
  count = count - 1
  dropped = dropped + 1
end
return dropped
"""
)

# KEYS as for _ADD (1-5); ARGV[1] queue, ARGV[2] id.
_REMOVE = (
    _DROP
    + """
local removed = redis.call('HEXISTS', KEYS[1], ARGV[2])
drop(ARGV[2])
return removed
"""
)


class DeadLetteredError(Exception):
    """The worker refused the message before running it; the reason says why.

    Stored as the task's FAILURE, so a caller waiting on `.get()` gets this instead of
    waiting forever.
    """


@dataclass
class Rejection(Exception):
    """Raised while checking a message on receipt: dead-letter it with this reason."""

    reason: str
    detail: str
    task: str | None = None
    task_id: str | None = None

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass
class DeadLetter:
    id: str
    queue: str
    reason: str
    detail: str
    time: float
    worker: str
    task: str | None = None
    task_id: str | None = None
    raw: str = ""
    raw_encoding: str = "utf-8"  # or "base64" for bytes that are not text
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def raw_bytes(self) -> bytes:
        return base64.b64decode(self.raw) if self.raw_encoding == "base64" else self.raw.encode()


def _text(raw: bytes | str) -> tuple[str, str]:
    if isinstance(raw, str):
        return raw, "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"


class DeadLetters:
    def __init__(
        self,
        client: redis.Redis,
        *,
        cap: int = DEFAULT_CAP,
        retention: float = DEFAULT_RETENTION,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        self.client = client
        self.cap = cap
        self.retention = retention
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._add = client.register_script(_ADD)
        self._add_member = client.register_script(batches.add_and_count_dead(_ADD))
        self._remove = client.register_script(_REMOVE)

    @staticmethod
    def _keys(queue: str) -> list[str]:
        return [ENTRIES, QUEUE_PREFIX + queue, QUEUES, SIZES, BYTES]

    def add(
        self,
        *,
        queue: str,
        reason: str,
        detail: str,
        raw: bytes | str,
        worker: str = "",
        task: str | None = None,
        task_id: str | None = None,
        inflight: tuple[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> DeadLetter:
        """Store one dead letter; with `inflight=(hash, tag)` also release the held message.

        A raw message over `max_entry_bytes` is kept as its first HEAD_BYTES, with its size
        and SHA-256 in `extra` (it cannot be replayed; it was far too large to run anyway).
        """
        extra = dict(extra or {})
        if len(raw) > self.max_entry_bytes:
            whole = raw.encode() if isinstance(raw, str) else raw
            extra.update(raw_size=len(whole), raw_sha256=hashlib.sha256(whole).hexdigest(), raw_cut=True)
            raw = whole[:HEAD_BYTES]
            detail = f"{detail} (kept its first {HEAD_BYTES:,} of {len(whole):,} bytes)"
        text, encoding = _text(raw)
        entry = DeadLetter(
            id=f"{queue}/{uuid.uuid4().hex[:16]}",
            queue=queue,
            reason=reason,
            detail=detail[:2000],
            time=time.time(),
            worker=worker,
            task=task,
            task_id=task_id,
            raw=text,
            raw_encoding=encoding,
            extra=extra,
        )
        keys = self._keys(queue)
        args: list[Any] = [
            queue,
            entry.id,
            json.dumps(asdict(entry)),
            int(entry.time * 1000),
            self.cap,
            int(self.retention * 1000),
            self.max_bytes,
        ]
        if inflight is not None:
            keys.append(inflight[0])
            args.append(inflight[1])
        batch = batches.batch_of_raw(raw) if task_id else None
        if batch is None:
            self._add(keys=keys, args=args)
        else:  # a batch member: counted as failed, and its batch's on_death, in the same step
            args += [*([] if inflight is not None else [""]), batch, task_id, batches.BELL_PREFIX]
            self._add_member(keys=keys, args=args)
        dead_lettered.send(sender=self, queue=queue, reason=reason)
        return entry

    def queues(self) -> list[str]:
        return sorted(q.decode() for q in cast("set[bytes]", self.client.smembers(QUEUES)))

    def count(self, queue: str) -> int:
        return int(self.client.zcard(QUEUE_PREFIX + queue))

    def list(
        self,
        queue: str | None = None,
        *,
        task: str | None = None,
        reason: str | None = None,
        limit: int | None = 100,
    ) -> list[DeadLetter]:
        """Newest first, filtered by queue, task name and reason."""
        out: list[DeadLetter] = []
        for q in [queue] if queue else self.queues():
            ids = cast("list[bytes]", self.client.zrevrange(QUEUE_PREFIX + q, 0, -1))
            if not ids:
                continue
            for raw in self.client.hmget(ENTRIES, ids):
                if raw is None:
                    continue
                entry = DeadLetter(**json.loads(raw))
                if (task is None or entry.task == task) and (reason is None or entry.reason == reason):
                    out.append(entry)
        out.sort(key=lambda e: e.time, reverse=True)
        return out if limit is None else out[:limit]

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = self.client.hget(ENTRIES, entry_id)
        return DeadLetter(**json.loads(raw)) if raw is not None else None

    def remove(self, entry_id: str) -> bool:
        queue = entry_id.rsplit("/", 1)[0]
        return bool(self._remove(keys=self._keys(queue), args=[queue, entry_id]))

    def purge(self, queue: str | None = None, *, task: str | None = None, reason: str | None = None) -> int:
        entries = self.list(queue, task=task, reason=reason, limit=None)
        for entry in entries:
            self.remove(entry.id)
        return len(entries)

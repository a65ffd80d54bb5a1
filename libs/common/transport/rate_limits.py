"""Rate limits shared by every worker of every host: one Lua call decides, in Redis.

Celery's `rate_limit` is per worker process, and a rate-limited task blocks the tasks behind
it on its queue (celery#5732, celery#8119). Here a limit is a name (and optionally a key,
such as a doctor's id) with a sliding window ("at most N starts in any window of 1 s or
1 min") and/or a concurrency cap ("at most N at once"), kept in Redis and checked by one
script (`ACQUIRE`), so two workers can never both take the last slot.

- **Window**: a sorted set of grant times. A grant counts for the window plus `MARGIN_MS`,
  so requests granted at the limit's pace still reach the peer within its window when a
  thread is a few milliseconds late between the grant and its request.
- **Concurrency**: a sorted set of holders, scored by the end of their lease. A holder
  names its worker process's broker owner (`ownership.Owner`); a slot whose owner stopped
  heartbeating (SIGKILL, a lost host) is freed by the next acquire, and any slot is freed
  when its lease runs out, so no slot is held for ever.
- **Over the limit**: the caller is told when to try again (`RateLimited.until_ms`): when
  the oldest grant leaves the window, and never sooner than the previous caller told to
  wait plus one slot's spacing (window / N), so waiting callers come back spread at the
  limit's pace instead of all at once. `limited_tasks` turns that into "back to the delayed
  set until then": no thread or prefetch slot is held while waiting.

The registry (`REGISTRY`, `SPECS`) records each limit and key in use for the operations
page (`snapshot`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis

from common.settings import get_settings
from common.transport.broker import ownership, scripts
from common.transport.locks import redis_client
from contracts.declare import Rate, parse_rate

PREFIX = "jobs.ratelimit:"
REGISTRY = "jobs.ratelimits"  # zset "<name>\n<key>" -> last use (ms)
SPECS = "jobs.ratelimits.specs"  # hash name -> {"rate": "5/s", "concurrency": 2}
MARGIN_MS = 100  # a grant counts this much longer than its window: grant-to-request jitter
CONCURRENCY_RETRY_MS = 1000  # how soon a caller turned away by the cap tries again
FORGET_AFTER_MS = 3600 * 1000  # the registry forgets a limit's key unused this long
_SAFE_KEY = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

# KEYS: window zset, running zset, next-due string, REGISTRY, OWNERS, SPECS.
# ARGV: count (0: no window), window ms (margin included), cap (0: none), holder,
# lease ms, dead-after ms, registry member, limit name, spec JSON, concurrency retry ms.
# Returns {1, now, in window, running} when granted, {0, due, in window, running} when not.
ACQUIRE = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count, window, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local holder, lease, dead_after = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local n, c, free_at = 0, 0, 0
if count > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  n = redis.call('ZCARD', KEYS[1])
  if n >= count then
    local oldest = redis.call('ZRANGE', KEYS[1], n - count, n - count, 'WITHSCORES')
    free_at = tonumber(oldest[2]) + window
  end
end
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local owner = string.match(m, '^(.-)|')
    if owner and owner ~= '' then
      local beat = redis.call('ZSCORE', KEYS[5], owner)
      if not beat or tonumber(beat) < now - dead_after then redis.call('ZREM', KEYS[2], m) end
    end
  end
  c = redis.call('ZCARD', KEYS[2])
  if c >= cap then free_at = math.max(free_at, now + tonumber(ARGV[10])) end
end
redis.call('ZADD', KEYS[4], now, ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - """
    + str(FORGET_AFTER_MS)
    + """)
redis.call('HSET', KEYS[6], ARGV[8], ARGV[9])
if free_at > now then
  local spacing = 0
  if count > 0 then spacing = math.floor(window / count) end
  local prev = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
  local due = math.max(free_at, prev + spacing)
  redis.call('SET', KEYS[3], due, 'PX', due - now + window)
  return {0, due, n, c}
end
if count > 0 then
  redis.call('ZADD', KEYS[1], now, holder)
  redis.call('PEXPIRE', KEYS[1], window + 1000)
end
if cap > 0 then
  redis.call('ZADD', KEYS[2], now + lease, holder)
  if redis.call('PTTL', KEYS[2]) < lease + 1000 then redis.call('PEXPIRE', KEYS[2], lease + 1000) end
end
return {1, now, n + 1, c + 1}
"""
)


class RateLimited(Exception):
    """Over a shared limit: try again at `until_ms` (epoch ms, Redis's clock). Raised inside a
    task, it sends the task back to the delayed set until then, not counted as a retry."""

    def __init__(self, name: str, until_ms: int) -> None:
        super().__init__(f"over the rate limit {name!r}; may start again at {until_ms} ms")
        self.name = name
        self.until_ms = until_ms


@dataclass(frozen=True)
class Limit:
    """A shared limit: `rate` and/or `concurrency` under `name` (a task's name, "crm")."""

    name: str
    rate: Rate | None = None
    concurrency: int | None = None

    @property
    def window_ms(self) -> int:
        return self.rate.seconds * 1000 + MARGIN_MS if self.rate else 0

    def spec(self) -> str:
        return json.dumps({"rate": str(self.rate) if self.rate else None, "concurrency": self.concurrency})


def key_part(value: Any) -> str:
    """A value as part of a Redis key: itself when short and plain, else its SHA-1 (hostile
    input may be anything: newlines, megabytes)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if _SAFE_KEY.fullmatch(text) else hashlib.sha1(text.encode(errors="replace")).hexdigest()


@dataclass(frozen=True)
class Grant:
    """A slot taken: `release` it when a concurrency-capped call ends."""

    limit: Limit
    base: str
    holder: str

    def release(self, client: redis.Redis) -> None:
        if self.limit.concurrency:
            client.zrem(self.base + ":running", self.holder)


class Limiter:
    """Asks Redis whether a call may start now under a `Limit`."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._acquire = client.register_script(ACQUIRE)

    def acquire(self, limit: Limit, key: Any = None, *, lease: float = 3600.0) -> Grant:
        """Take a slot under `limit` (for `key`, if the limit is per key), or raise `RateLimited`.

        `lease`: seconds after which a concurrency slot is freed even if never released.
        """
        part = "" if key is None else key_part(key)
        base = PREFIX + limit.name + (f":{part}" if part else "")
        owner = ownership.current_owner()
        holder = f"{owner.id if owner else ''}|{uuid.uuid4().hex}"
        dead_after_ms = int(get_settings().broker_heartbeat_timeout * 1000)
        granted, when, *_ = self._acquire(
            keys=[base + ":window", base + ":running", base + ":next", REGISTRY, scripts.OWNERS, SPECS],
            args=[
                limit.rate.count if limit.rate else 0, limit.window_ms, limit.concurrency or 0, holder,
                int(lease * 1000), dead_after_ms, f"{limit.name}\n{part}", limit.name, limit.spec(),
                CONCURRENCY_RETRY_MS,
            ],
        )  # fmt: skip
        if not int(granted):
            raise RateLimited(limit.name, int(when))
        return Grant(limit, base, holder)

    @contextmanager
    def slot(self, limit: Limit, key: Any = None, *, lease: float = 3600.0) -> Iterator[Grant]:
        """`acquire`, then release the concurrency slot (if any) when the block ends."""
        grant = self.acquire(limit, key, lease=lease)
        try:
            yield grant
        finally:
            if limit.concurrency:
                try:
                    grant.release(self.client)
                except redis.RedisError:
                    pass  # the lease, or the owner's heartbeat, frees it


_limiters: dict[int, Limiter] = {}


def limiter(client: redis.Redis | None = None) -> Limiter:
    """The process's limiter on the broker's Redis (`common.transport.locks`' client)."""
    if client is None:
        client = redis_client()
    found = _limiters.get(id(client))
    if found is None or found.client is not client:
        found = _limiters[id(client)] = Limiter(client)
    return found


@dataclass(frozen=True)
class LimitUse:
    """A limit (and key) in use, for the operations page."""

    name: str
    key: str
    rate: str | None
    concurrency: int | None
    in_window: int
    running: int
    next_free_in: float | None  # seconds until a waiting caller may try again; None: none waits


def snapshot(client: redis.Redis, most: int = 50) -> list[LimitUse]:
    """The limits used in the last hour, most recently used first, with their current use."""
    members = cast("list[bytes]", client.zrevrange(REGISTRY, 0, most - 1))
    stored = cast("dict[bytes, bytes]", client.hgetall(SPECS) or {})
    specs = {k.decode(errors="replace"): _spec(v) for k, v in stored.items()}
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    found: list[tuple[str, str, dict[str, Any]]] = []
    for raw in members:
        name, _, part = raw.decode(errors="replace").partition("\n")
        spec = specs.get(name) or {}
        base = PREFIX + name + (f":{part}" if part else "")
        rate = spec.get("rate")
        window_ms = _window_ms(rate)
        pipe.zcount(base + ":window", now_ms - window_ms if window_ms else "+inf", "+inf")
        pipe.zcount(base + ":running", now_ms, "+inf")
        pipe.get(base + ":next")
        found.append((name, part, spec))
    replies = pipe.execute() if found else []
    uses = []
    for i, (name, part, spec) in enumerate(found):
        in_window, running, next_due = replies[3 * i : 3 * i + 3]
        wait = (int(next_due) - now_ms) / 1000 if next_due is not None else None
        uses.append(
            LimitUse(
                name, part, spec.get("rate"), spec.get("concurrency"), int(in_window), int(running),
                wait if wait is not None and wait > 0 else None,
            )
        )  # fmt: skip
    return uses


def _spec(raw: bytes) -> dict[str, Any]:
    try:
        spec = json.loads(raw)
    except ValueError:
        return {}
    return spec if isinstance(spec, dict) else {}


def _window_ms(rate: str | None) -> int:
    if not rate:
        return 0
    try:
        parsed = parse_rate(rate)
    except ValueError:
        return 0  # not ours: shown, not counted
    return parsed.seconds * 1000 + MARGIN_MS

"""The shared limiter's one Lua step against a real Redis: window, spacing, cap, leases.

Many threads ask at once, as the threads of several workers would; what was granted is
read back from the grants' own times (Redis's clock), so a window that let one too many
through fails here.
"""

from __future__ import annotations

import threading
import time
import uuid

import redis

from common.transport import rate_limits
from common.transport.broker import scripts
from common.transport.rate_limits import MARGIN_MS, Limit, Limiter, RateLimited, key_part, snapshot
from contracts.declare import Rate
from devtools.testing.waiting import max_in_any_window


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_many_threads_racing_never_get_more_than_n_in_any_window(redis_client: redis.Redis) -> None:
    limit = Limit(unique("race"), Rate(5, 1))
    granted: list[int] = []
    waits: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 3.0

    def ask() -> None:
        limiter = Limiter(redis_client)
        while time.monotonic() < deadline:
            try:
                limiter.acquire(limit)
                now = redis_client.time()
                with lock:
                    granted.append(now[0] * 1000 + now[1] // 1000)
            except RateLimited as exc:
                with lock:
                    waits.append(exc.until_ms)
            time.sleep(0.005)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = max_in_any_window(granted, 1000)
    print(
        f"\n16 threads for 3 s at 5/s: {len(granted)} granted, {len(waits)} turned away, "
        f"max {seen} in any 1 s"
    )
    assert seen <= 5
    assert 10 <= len(granted) <= 15  # 5 at once, then 5 per 1.1 s: the limiter does not starve
    window = redis_client.zrange(rate_limits.PREFIX + limit.name + ":window", 0, -1, withscores=True)
    assert max_in_any_window([int(pair[1]) for pair in window], 1000 + MARGIN_MS) <= 5


def test_those_turned_away_are_told_to_come_back_spread_at_the_limits_pace(redis_client: redis.Redis) -> None:
    limit = Limit(unique("spread"), Rate(2, 1))
    limiter = Limiter(redis_client)
    limiter.acquire(limit)
    limiter.acquire(limit)
    dues = []
    for _ in range(6):
        try:
            limiter.acquire(limit)
        except RateLimited as exc:
            dues.append(exc.until_ms)
    gaps = [b - a for a, b in zip(dues, dues[1:], strict=False)]
    print(f"\ndue times of 6 turned away at 2/s, gaps in ms: {gaps}")
    assert len(dues) == 6
    spacing = (1000 + MARGIN_MS) // 2
    assert all(g == spacing for g in gaps)
    now = redis_client.time()
    assert 900 <= dues[0] - (now[0] * 1000 + now[1] // 1000) <= 1000 + MARGIN_MS


def test_a_limit_per_key_keeps_one_window_per_key(redis_client: redis.Redis) -> None:
    limit = Limit(unique("perkey"), Rate(1, 60))
    limiter = Limiter(redis_client)
    limiter.acquire(limit, 7)
    limiter.acquire(limit, 8)
    try:
        limiter.acquire(limit, 7)
        raise AssertionError("the second call for key 7 within a minute was granted")
    except RateLimited as exc:
        assert exc.name == limit.name


def test_hostile_keys_become_short_safe_key_parts() -> None:
    for hostile in ("a\nb", "x" * 10_000, {"nested": ["\u2028"]}, "jobs.delayed", ""):
        part = key_part(hostile)
        assert len(part) <= 64 and "\n" not in part
    assert key_part(42) == "42" and key_part("doctor-7") == "doctor-7"


def test_a_concurrency_cap_frees_a_slot_on_release_on_lease_end_and_on_a_dead_owner(
    redis_client: redis.Redis,
) -> None:
    limit = Limit(unique("cap"), None, concurrency=2)
    limiter = Limiter(redis_client)
    first = limiter.acquire(limit, lease=60)
    limiter.acquire(limit, lease=0.3)
    try:
        limiter.acquire(limit)
        raise AssertionError("a third holder got a cap of 2")
    except RateLimited:
        pass
    first.release(redis_client)
    third = limiter.acquire(limit, lease=60)  # the released slot
    time.sleep(0.4)
    limiter.acquire(limit, lease=60)  # the 0.3 s lease ran out
    # A holder whose worker process stopped heartbeating (SIGKILLed) is freed at the next ask.
    running = rate_limits.PREFIX + limit.name + ":running"
    redis_client.zrem(running, third.holder)
    dead = "deadhost:1:abcdef12"
    redis_client.zadd(scripts.OWNERS, {dead: 0})
    redis_client.zadd(running, {f"{dead}|{uuid.uuid4().hex}": time.time() * 1000 + 60_000})
    redis_client.zadd(running, {f"{dead}|{uuid.uuid4().hex}": time.time() * 1000 + 60_000})
    limiter.acquire(limit, lease=60)
    assert redis_client.zcard(running) == 2
    redis_client.zrem(scripts.OWNERS, dead)


def test_the_operations_snapshot_shows_each_limit_and_its_use(redis_client: redis.Redis) -> None:
    limit = Limit(unique("shown"), Rate(3, 60), concurrency=4)
    limiter = Limiter(redis_client)
    limiter.acquire(limit, "k1")
    limiter.acquire(limit, "k1")
    uses = {(u.name, u.key): u for u in snapshot(redis_client)}
    use = uses[(limit.name, "k1")]
    assert (use.rate, use.concurrency, use.in_window, use.running) == ("3/m", 4, 2, 2)

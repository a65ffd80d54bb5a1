"""The broker transport: one Redis client per channel, following kombu's pool."""

from __future__ import annotations

from typing import Any

from celery import Celery

from common.celery_app import current_app
from common.celery_config import celery_config
from common.settings import Settings
from common.transport.broker.transport import Channel


def test_one_client_serves_every_command_and_follows_a_new_pool(redis_url: str) -> None:
    with current_app().connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel), "broker_transport must select common.transport.broker"
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        channel._put("test-broker", {"body": "one"})
        # After a fork or a lost connection kombu drops its pool; the client must follow.
        channel._disconnect_pools()
        with channel.conn_or_acquire() as client:
            assert client is not first and client.connection_pool is channel.pool
        channel._put("test-broker", {"body": "two"})
        assert channel._size("test-broker") == 2
        channel._purge("test-broker")


def test_a_tls_broker_url_keeps_tls() -> None:
    """An explicit transport overrides the URL scheme; rediss:// must not lose its TLS."""
    app = Celery("tls-check")
    app.conf.update(celery_config(Settings(redis_url="rediss://cache.example:6380/0")))
    conn = app.connection_for_write()  # built, not connected
    assert conn.ssl, "rediss:// broker URL would connect without TLS"
    assert conn.transport_cls == "rediss"


# --- reliable delivery: the Lua steps and the owners' tick, against a real Redis ------------
import time  # noqa: E402

import redis  # noqa: E402

from common.transport.broker import ownership, scripts  # noqa: E402


def _owner(redis_url: str, dead_after: float = 1.0) -> ownership.Owner:
    """An owner whose heartbeat thread is stopped, so each test drives the ticks itself."""
    params = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    owner = ownership.Owner(dict(params), dead_after=dead_after, tick=3600)
    owner._stop.set()
    return owner


def _fetch(client: redis.Redis, owner: ownership.Owner, *lists: str) -> Any:
    return client.eval(
        scripts.FETCH, 1 + len(lists), owner.inflight_key, *lists, ownership.SEP, scripts.BELL_PREFIX
    )


def test_fetch_moves_a_message_into_the_owners_hash_in_one_step(redis_client, redis_url: str) -> None:
    owner = _owner(redis_url)
    redis_client.lpush("t-fetch", '{"properties": {"delivery_tag": "tag-1"}, "body": "x"}', "not json")
    list_key, raw, tag = _fetch(redis_client, owner, "t-fetch")
    assert (list_key, tag) == (b"t-fetch", b"tag-1")
    assert redis_client.hget(owner.inflight_key, "tag-1") == b"t-fetch\n" + raw
    # More waiting: the bell rings, so an idle consumer wakes at once.
    assert redis_client.llen(scripts.BELL_PREFIX + "t-fetch") == 1
    # A raw item that is not a kombu message is still recorded (and can be dead-lettered).
    _, raw2, tag2 = _fetch(redis_client, owner, "t-fetch")
    assert raw2 == b"not json" and tag2.startswith(b"jobs-")
    assert redis_client.llen("t-fetch") == 0 and redis_client.hlen(owner.inflight_key) == 2
    assert _fetch(redis_client, owner, "t-fetch") is None


def test_one_fetch_takes_up_to_its_limit_highest_priority_first(redis_client, redis_url: str) -> None:
    """A worker with free prefetch slots fills them in one round trip, each message recorded."""
    owner = _owner(redis_url)
    high, low = "t-batch", f"t-batch{ownership.SEP}5"
    redis_client.lpush(high, "h1", "h2")
    redis_client.lpush(low, "l1", "l2")
    bell = scripts.BELL_PREFIX + "t-batch"

    def fetch(limit: int) -> list:
        return redis_client.eval(
            scripts.FETCH, 3, owner.inflight_key, high, low, ownership.SEP, scripts.BELL_PREFIX, limit
        )

    reply = fetch(3)
    assert reply[1::3] == [b"h1", b"h2", b"l1"] and reply[0::3] == [
        high.encode(),
        high.encode(),
        low.encode(),
    ]
    assert len(set(reply[2::3])) == 3
    for list_key, raw, tag in zip(reply[0::3], reply[1::3], reply[2::3], strict=True):
        assert redis_client.hget(owner.inflight_key, tag) == list_key + b"\n" + raw
    assert redis_client.llen(bell) == 1, "one message is left: an idle consumer must wake"
    redis_client.delete(bell)
    reply = fetch(3)
    assert reply[1::3] == [b"l2"] and redis_client.hlen(owner.inflight_key) == 4
    assert redis_client.llen(bell) == 0, "nothing left: no wake-up"
    assert fetch(3) is None


def test_a_dead_owners_messages_go_back_to_the_front_of_their_queue(redis_client, redis_url: str) -> None:
    dead, alive = _owner(redis_url), _owner(redis_url)
    redis_client.lpush("t-recover", '{"properties": {"delivery_tag": "held"}}', '{"properties": {}}')
    _fetch(redis_client, dead, "t-recover")  # `dead` holds the older message
    redis_client.lpush("t-recover", '{"properties": {"delivery_tag": "newer"}}')
    alive.tick()
    assert redis_client.hlen(dead.inflight_key) == 1, "recovered before the heartbeat timeout"
    for _ in range(7):  # `alive` keeps ticking; `dead` has stopped
        time.sleep(0.2)
        alive.tick()
    assert redis_client.exists(dead.inflight_key) == 0
    assert alive.recovered >= 1  # (owners left by earlier tests count too)
    # Back at the consuming end: it runs next, before messages published after it.
    assert b"held" in redis_client.lindex("t-recover", -1)
    assert redis_client.zscore(scripts.OWNERS, dead.id) is None


def test_a_gap_in_everyones_heartbeats_is_not_a_death_sentence(redis_client, redis_url: str) -> None:
    """After a Redis outage (or with every worker down) no tick ran: nobody is judged on that gap."""
    sleeper, waker = _owner(redis_url), _owner(redis_url)
    redis_client.lpush("t-gap", '{"properties": {"delivery_tag": "long-task"}}')
    _fetch(redis_client, sleeper, "t-gap")
    time.sleep(1.2)  # longer than dead_after (1 s), and nobody ticked meanwhile
    waker.tick()
    assert redis_client.hlen(sleeper.inflight_key) == 1, "a live owner lost its task to a gap"


def test_requeue_unknown_returns_what_a_lost_fetch_reply_left_behind(redis_client, redis_url: str) -> None:
    owner = _owner(redis_url)
    redis_client.lpush(
        "t-lost", '{"properties": {"delivery_tag": "seen"}}', '{"properties": {"delivery_tag": "lost"}}'
    )
    _fetch(redis_client, owner, "t-lost")
    owner.took("seen")
    _fetch(redis_client, owner, "t-lost")  # recorded in Redis; the reply never reached the worker
    assert owner.requeue_unknown() == 1
    assert redis_client.hkeys(owner.inflight_key) == [b"seen"]
    assert b"lost" in redis_client.lindex("t-lost", -1)


def test_a_future_eta_waits_in_redis_and_is_moved_onto_its_queue_when_due(
    redis_client, redis_url: str
) -> None:
    from datetime import UTC, datetime, timedelta

    with current_app().connection_for_write() as conn:
        channel = conn.default_channel
        eta = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        channel._put(
            "t-delay", {"headers": {"eta": eta}, "properties": {"delivery_tag": "later"}, "body": ""}
        )
        assert redis_client.llen("t-delay") == 0 and redis_client.zcard(scripts.DELAYED) >= 1
        owner = _owner(redis_url)
        owner.tick()
        assert redis_client.llen("t-delay") == 0, "moved before it was due"
        time.sleep(1.1)
        owner.tick()
        assert redis_client.llen("t-delay") == 1
        assert redis_client.llen(scripts.BELL_PREFIX + "t-delay") == 1


def test_install_wins_over_a_redis_url_resolved_before_it() -> None:
    """kombu caches alias lookups: an earlier `redis://` must not pin the stock transport."""
    from kombu import Connection
    from kombu.transport import TRANSPORT_ALIASES, _transport_cache

    from common.transport.broker.transport import install

    saved = TRANSPORT_ALIASES["redis"]
    try:
        TRANSPORT_ALIASES["redis"] = "kombu.transport.redis:Transport"
        _transport_cache.pop("redis", None)
        assert Connection("redis://127.0.0.1:1/0").transport_cls == "redis"
        assert Connection("redis://127.0.0.1:1/0").get_transport_cls().__module__ == "kombu.transport.redis"
        install()
        ours = "common.transport.broker.transport"
        assert Connection("redis://127.0.0.1:1/0").get_transport_cls().__module__ == ours
    finally:
        TRANSPORT_ALIASES["redis"] = saved
        _transport_cache.pop("redis", None)


# --- redelivery: every return to a queue is counted, and marked on the next delivery ------
import json  # noqa: E402

from common.transport.broker.messages import marked_redelivered as _marked_redelivered  # noqa: E402
from common.transport.dead_letter_store import MALFORMED, DeadLetters  # noqa: E402


def _fetch_counted(client: redis.Redis, owner: ownership.Owner, *lists: str) -> Any:
    """FETCH as the transport calls it: (list, raw, tag, returns, count key) per message."""
    return client.eval(
        scripts.FETCH, 1 + len(lists), owner.inflight_key, *lists, ownership.SEP, scripts.BELL_PREFIX, 1, 1
    )


def test_every_return_to_the_queue_is_counted_and_the_item_is_never_rewritten(
    redis_client, redis_url: str
) -> None:
    owner = _owner(redis_url)
    raw = b'{"body": "W10=", "headers": {"x": []}, "properties": {"delivery_tag": "t-count-1", "n": 1.10}}'
    redis_client.lpush("t-count", raw)
    _, got, tag, returns, key = _fetch_counted(redis_client, owner, "t-count")
    assert (got, tag, returns, key) == (raw, b"t-count-1", 0, b""), "a first delivery is not redelivered"
    owner.took("t-count-1")
    assert owner.requeue(["t-count-1"]) == 1  # Reject(requeue=True)
    assert redis_client.lindex("t-count", -1) == raw, "the stored message must stay byte for byte"
    _, got, tag, returns, key = _fetch_counted(redis_client, owner, "t-count")
    assert (got, returns, key) == (raw, 1, b"t-count-1")
    # An unstarted prefetch given back after a lost reply counts too.
    assert owner.requeue_unknown() == 1
    _, _, tag, returns, key = _fetch_counted(redis_client, owner, "t-count")
    assert returns == 2 and 0 < redis_client.pttl(scripts.REDELIVERED) <= scripts.REDELIVERED_TTL_MS
    # Settled: its count goes with it.
    owner.took(tag.decode())
    owner.redelivery(tag.decode(), returns, key.decode())
    owner.ack(tag.decode())
    assert redis_client.hget(scripts.REDELIVERED, "t-count-1") is None
    assert redis_client.hlen(owner.inflight_key) == 0


def test_a_dead_owners_messages_come_back_counted(redis_client, redis_url: str) -> None:
    dead, alive = _owner(redis_url, dead_after=0.5), _owner(redis_url, dead_after=0.5)
    redis_client.lpush("t-count-dead", '{"properties": {"delivery_tag": "t-count-dead-1"}}')
    _fetch_counted(redis_client, dead, "t-count-dead")
    for _ in range(8):
        time.sleep(0.15)
        alive.tick()
    assert redis_client.exists(dead.inflight_key) == 0
    _, _, tag, returns, key = _fetch_counted(redis_client, alive, "t-count-dead")
    assert (tag, returns, key) == (b"t-count-dead-1", 1, b"t-count-dead-1")
    alive.settled("t-count-dead-1")  # e.g. dead-lettered: nothing to clean for an unknown tag
    alive.redelivery("t-count-dead-1", 1, "t-count-dead-1")
    alive.settled("t-count-dead-1")
    assert redis_client.hget(scripts.REDELIVERED, "t-count-dead-1") is None


def test_redelivered_is_set_as_kombu_sets_it_and_nothing_else_changes() -> None:
    raw = json.dumps(
        {
            "body": "W1tdLCB7fSwge31d",
            "headers": {"task": "t", "id": "1", "argsrepr": "[]", "kwargs": {}, "group": None, "n": 1e300},
            "properties": {"delivery_tag": "x", "delivery_info": {"exchange": "", "routing_key": "q"}},
        }
    ).encode()
    marked = json.loads(_marked_redelivered(raw, 0))
    assert marked["headers"]["redelivered"] is True
    assert marked["properties"]["delivery_info"] == {"exchange": "", "routing_key": "q", "redelivered": True}
    del marked["headers"]["redelivered"], marked["properties"]["delivery_info"]["redelivered"]
    assert marked == json.loads(raw)
    for unreadable in (b"not json", b"[" * 100_000, b'{"properties": 1}', b"\xff\xfe"):
        assert _marked_redelivered(unreadable, 0) == unreadable
    assert _marked_redelivered(raw, 10) == raw, "over the ceiling: left for the intake to refuse"


# --- a malformed entry in the delayed set or an in-flight hash never stops the tick ----------
def test_a_malformed_delayed_entry_is_set_aside_and_everything_else_keeps_moving(
    redis_client, redis_url: str
) -> None:
    owner = _owner(redis_url)
    redis_client.delete("t-aside-hash")
    redis_client.hset("t-aside-hash", "a", "b")  # a key that is not a list
    past = 1000
    redis_client.zadd(
        scripts.DELAYED,
        {
            "no newline at all": past,
            "t-aside-hash\n{}": past,
            "jobs.owners\n{}": past,
            "\nno queue": past,
            "t-aside\ngood one": past + 1,
        },
    )
    before = {e.id for e in DeadLetters(redis_client).list(reason=MALFORMED, limit=None)}
    owner.tick()  # must not raise
    assert redis_client.lrange("t-aside", 0, -1) == [b"good one"]
    assert redis_client.zcard(scripts.DELAYED) == 0 or not any(
        redis_client.zscore(scripts.DELAYED, e) is not None
        for e in ("no newline at all", "t-aside-hash\n{}", "jobs.owners\n{}", "\nno queue")
    )
    assert redis_client.llen(scripts.QUARANTINE) == 0, "a live owner dead-letters what was set aside"
    new = [e for e in DeadLetters(redis_client).list(reason=MALFORMED, limit=None) if e.id not in before]
    by_queue = {(e.queue, e.raw) for e in new}
    assert by_queue == {
        (scripts.DELAYED, "no newline at all"),
        ("t-aside-hash", "{}"),
        ("jobs.owners", "{}"),
        (scripts.DELAYED, "no queue"),
    }
    assert all(e.detail.startswith("delayed entry ") for e in new)
    assert any("WRONGTYPE" in e.detail for e in new if e.queue == "t-aside-hash")
    assert redis_client.type(scripts.OWNERS) == b"zset"


def test_a_malformed_in_flight_entry_does_not_stop_a_dead_owners_recovery(
    redis_client, redis_url: str
) -> None:
    dead, alive = _owner(redis_url, dead_after=0.5), _owner(redis_url, dead_after=0.5)
    redis_client.hset("t-aside-hash2", "a", "b")
    redis_client.hset(
        dead.inflight_key,
        mapping={"bad-1": "no newline", "bad-2": "t-aside-hash2\n{}", "good": "t-aside-recover\nthe message"},
    )
    for _ in range(8):
        time.sleep(0.15)
        alive.tick()  # must not raise
    assert redis_client.exists(dead.inflight_key) == 0
    assert redis_client.lrange("t-aside-recover", 0, -1) == [b"the message"]
    assert redis_client.llen(scripts.QUARANTINE) == 0
    raws = {e.raw for e in DeadLetters(redis_client).list(reason=MALFORMED, limit=None)}
    assert {"no newline", "{}"} <= raws


def test_marking_keeps_non_ascii_text_as_it_was() -> None:
    raw = '{"body": "x", "headers": {"argsrepr": "(\'Zoë\',)"}, "properties": {}}'.encode()
    marked = _marked_redelivered(raw, 0)
    assert "Zoë".encode() in marked and json.loads(marked)["properties"]["delivery_info"]["redelivered"]
    lone = b'{"body": "\\ud800", "headers": {}, "properties": {}}'
    assert json.loads(_marked_redelivered(lone, 0))["body"] == "\ud800"


def test_each_redis_a_process_consumes_from_has_its_own_owner(redis_url: str) -> None:
    """The first connection a process opened (a consumer through a proxy since gone, another
    server) made the only owner, and every later channel's acks went to it (Celery's suite:
    Reject(requeue=True) never requeued, inspect scheduled read a dead address)."""
    params = dict(redis.Redis.from_url(redis_url).connection_pool.connection_kwargs)
    elsewhere = {**params, "db": 5}
    first = ownership.owner_for(params, dead_after=10, tick=0.5)
    try:
        assert ownership.owner_for(dict(params), dead_after=10, tick=0.5) is first  # same server
        other = ownership.owner_for(elsewhere, dead_after=10, tick=0.5)
        assert other is not first and other.client.connection_pool.connection_kwargs["db"] == 5
        assert ownership.current_owner() in (first, other)  # the process's first, either way
    finally:
        for owner in list(ownership._owners.values()):
            owner.release()
        ownership._owners.clear()
        ownership._owner = None

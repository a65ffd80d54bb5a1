"""The broker transport: one Redis client per channel, following kombu's pool."""

from __future__ import annotations

from celery import Celery

from common.celery_app import current_app
from common.celery_config import celery_config
from common.settings import Settings
from common.transport.broker import Channel


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


def _fetch(client: redis.Redis, owner: ownership.Owner, *lists: str) -> list | None:
    return client.eval(
        scripts.FETCH, 1 + len(lists), owner.inflight_key, *lists, ownership.SEP, scripts.BELL_PREFIX
    )


def test_fetch_moves_a_message_into_the_owners_hash_in_one_step(redis_client, redis_url: str) -> None:  # type: ignore[no-untyped-def]
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


def test_one_fetch_takes_up_to_its_limit_highest_priority_first(redis_client, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """A worker with free prefetch slots fills them in one round trip, each message recorded."""
    owner = _owner(redis_url)
    high, low = "t-batch", f"t-batch{ownership.SEP}5"
    redis_client.lpush(high, "h1", "h2")
    redis_client.lpush(low, "l1", "l2")
    bell = scripts.BELL_PREFIX + "t-batch"

    def fetch(limit: int) -> list:  # type: ignore[type-arg]
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


def test_a_dead_owners_messages_go_back_to_the_front_of_their_queue(redis_client, redis_url: str) -> None:  # type: ignore[no-untyped-def]
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


def test_a_gap_in_everyones_heartbeats_is_not_a_death_sentence(redis_client, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """After a Redis outage (or with every worker down) no tick ran: nobody is judged on that gap."""
    sleeper, waker = _owner(redis_url), _owner(redis_url)
    redis_client.lpush("t-gap", '{"properties": {"delivery_tag": "long-task"}}')
    _fetch(redis_client, sleeper, "t-gap")
    time.sleep(1.2)  # longer than dead_after (1 s), and nobody ticked meanwhile
    waker.tick()
    assert redis_client.hlen(sleeper.inflight_key) == 1, "a live owner lost its task to a gap"


def test_requeue_unknown_returns_what_a_lost_fetch_reply_left_behind(redis_client, redis_url: str) -> None:  # type: ignore[no-untyped-def]
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
) -> None:  # type: ignore[no-untyped-def]
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

    from common.transport.broker import install

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

"""Pausing a queue (common.transport.broker.pause) against a real Redis: FETCH, the step that
takes a message, takes none of a paused queue, whatever its priority; a delayed message falling
due waits too; resume wakes a consumer; hostile entries pause or break nothing else; a Redis
restart with its append-only file keeps the pause."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from common.transport.broker import ownership, scripts
from common.transport.broker.pause import (
    PAUSED,
    UnknownQueueError,
    pause_queue,
    paused_queues,
    resume_queue,
)
from devtools.testing.faults import RestartableRedis

QUEUE, OTHER = "payments", "reports"  # real queue names: pause refuses any other


def _message(tag: str) -> str:
    return json.dumps({"properties": {"delivery_tag": tag}, "body": tag})


def _owner(url: str) -> ownership.Owner:
    params = redis.Redis.from_url(url).connection_pool.connection_kwargs
    owner = ownership.Owner(dict(params), dead_after=10, tick=3600)
    owner._stop.set()  # the test drives the ticks
    return owner


def _fetch(client: redis.Redis, owner: ownership.Owner, *lists: str, limit: int = 16) -> Any:
    return client.eval(
        scripts.FETCH, 1 + len(lists), owner.inflight_key, *lists, ownership.SEP, scripts.BELL_PREFIX, limit
    )


def _lists(queue: str) -> list[str]:
    return [queue, f"{queue}{ownership.SEP}5"]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    keys = [PAUSED, *_lists(QUEUE), *_lists(OTHER), scripts.BELL_PREFIX + QUEUE, scripts.BELL_PREFIX + OTHER]
    c.delete(*keys)
    yield c
    c.delete(*keys)
    c.close()


def test_a_paused_queue_gives_nothing_to_fetch_and_resume_gives_everything(
    client: redis.Redis, redis_url: str
) -> None:
    owner = _owner(redis_url)
    lists = [*_lists(QUEUE), *_lists(OTHER)]
    for key in lists:
        client.lpush(key, _message(f"{key}-1"))
    pause, made = pause_queue(client, QUEUE, by="ops@example", reason="gateway incident")
    assert made and pause.by == "ops@example" and pause.reason == "gateway incident"
    client.delete(scripts.BELL_PREFIX + QUEUE)

    reply = _fetch(client, owner, *lists)
    taken = {reply[k].decode() for k in range(0, len(reply), 3)}
    print(f"\n[pause] fetch while {QUEUE} paused took {sorted(taken)}")
    assert taken == set(_lists(OTHER)), "only the queue that is not paused"
    assert _fetch(client, owner, *lists) is None
    assert [client.llen(k) for k in _lists(QUEUE)] == [1, 1], "a paused queue keeps its messages"
    assert client.llen(scripts.BELL_PREFIX + QUEUE) == 0, "a paused queue's bell is not rung by a fetch"

    ended = resume_queue(client, QUEUE)
    assert ended is not None and ended.since == pause.since
    assert client.llen(scripts.BELL_PREFIX + QUEUE) == 1, "resume wakes an idle consumer"
    reply = _fetch(client, owner, *lists)
    assert {reply[k].decode() for k in range(0, len(reply), 3)} == set(_lists(QUEUE))
    assert paused_queues(client) == {}
    assert resume_queue(client, QUEUE) is None, "resuming a queue that is not paused is a no-op"


def test_a_delayed_message_falling_due_while_paused_waits_on_its_queue(
    client: redis.Redis, redis_url: str
) -> None:
    owner = _owner(redis_url)
    pause_queue(client, QUEUE, by="test")
    client.zadd(scripts.DELAYED, {f"{QUEUE}\n{_message('due-1')}": int(time.time() * 1000) - 1})
    owner.tick()  # moves due delayed messages onto their queues
    assert client.llen(QUEUE) == 1
    assert _fetch(client, owner, QUEUE) is None
    resume_queue(client, QUEUE)
    assert _fetch(client, owner, QUEUE)[2] == b"due-1"


def test_pausing_twice_keeps_the_first_and_unknown_names_are_refused(client: redis.Redis) -> None:
    first, made = pause_queue(client, QUEUE, by="alice")
    again, made_again = pause_queue(client, QUEUE, by="bob")
    assert made and not made_again and again == first and again.by == "alice"
    for bad in ("nosuch", "payments\n", "jobs.paused", ""):
        with pytest.raises(UnknownQueueError, match="the queues are"):
            pause_queue(client, bad, by="x")
        with pytest.raises(UnknownQueueError):
            resume_queue(client, bad)
    assert list(paused_queues(client)) == [QUEUE]


def test_hostile_entries_pause_only_what_they_name_and_break_no_fetch(
    client: redis.Redis, redis_url: str
) -> None:
    owner = _owner(redis_url)
    client.lpush(QUEUE, _message("m-1"))
    client.hset(PAUSED, "nosuch\nqueue", "{not json")  # written by hand: readable, removable
    client.hset(PAUSED, OTHER, json.dumps({"since": "NaN", "by": "x\x00" * 500}))
    found = paused_queues(client)
    assert found["nosuch\nqueue"].reason == "(unreadable entry)"
    assert found[OTHER].since == 0.0 and len(found[OTHER].by) <= 200 and found[OTHER].by.isprintable()
    assert _fetch(client, owner, QUEUE)[2] == b"m-1"
    assert resume_queue(client, "nosuch\nqueue") is not None
    # PAUSED of another type (a stray SET): FETCH must not fail, it pauses nothing.
    client.delete(PAUSED)
    client.set(PAUSED, "garbage")
    client.lpush(QUEUE, _message("m-2"))
    assert _fetch(client, owner, QUEUE)[2] == b"m-2"


def test_a_pause_survives_a_redis_restart() -> None:
    with RestartableRedis() as server:
        client = redis.Redis.from_url(server.url)
        owner = _owner(server.url)
        client.lpush(QUEUE, _message("m-1"))
        pause, _ = pause_queue(client, QUEUE, by="ops")
        time.sleep(1.2)  # appendfsync everysec
        down = server.restart(down_for=0.5)
        client = redis.Redis.from_url(server.url)
        print(f"\n[pause] Redis restarted ({down:.1f} s down): paused {list(paused_queues(client))}")
        assert paused_queues(client) == {QUEUE: pause}
        assert _fetch(client, owner, QUEUE) is None
        resume_queue(client, QUEUE)
        assert _fetch(client, owner, QUEUE)[2] == b"m-1"


def test_the_metrics_show_a_pause_and_how_long_it_lasts(client: redis.Redis) -> None:
    from common.observability.metrics import RedisCollector

    def scrape() -> dict[str, dict[str, float]]:
        families = RedisCollector([QUEUE, OTHER], lambda: client, min_interval=0).collect()
        return {f.name: {s.labels.get("queue", ""): s.value for s in f.samples} for f in families}

    assert scrape()["celery_queue_paused"] == {QUEUE: 0, OTHER: 0}
    client.hset(PAUSED, QUEUE, json.dumps({"since": time.time() - 1900, "by": "ops"}))
    figures = scrape()
    paused, seconds = figures["celery_queue_paused"], figures["celery_queue_paused_seconds"]
    print(f"\n[pause] metrics: paused {paused}, for {seconds}")
    assert figures["celery_queue_paused"] == {QUEUE: 1, OTHER: 0}
    assert 1899 <= figures["celery_queue_paused_seconds"][QUEUE] <= 1960
    assert figures["celery_queue_paused_seconds"][OTHER] == 0
    # A PAUSED of another type pauses nothing (FETCH) and does not blind the other figures.
    client.delete(PAUSED)
    client.set(PAUSED, "garbage")
    figures = scrape()
    assert figures["celery_broker_up"] == {"": 1} and figures["celery_queue_paused"] == {QUEUE: 0, OTHER: 0}

"""The dead-letter store on a real Redis: bounded by a cap and a retention, filtered as operators ask."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import cast

import redis

from common.deadletters import DeadLetters
from common.transport.dead_letter_store import (
    BYTES,
    ENTRIES,
    FAILED,
    HEAD_BYTES,
    INVALID_ARGUMENTS,
    SIZES,
    TOO_LARGE,
    UNKNOWN_TASK,
)


def a_queue() -> str:
    """A queue name of this test's own: the store is shared by the whole session."""
    return f"q-{uuid.uuid4().hex[:8]}"


def add(store: DeadLetters, queue: str, n: int, **fields: str) -> list[str]:
    ids = []
    for i in range(n):
        entry = store.add(
            queue=queue,
            reason=fields.get("reason", FAILED),
            detail=f"number {i}",
            raw=f'{{"n": {i}}}',
            task=fields.get("task", "sync.echo"),
            task_id=str(uuid.uuid4()),
        )
        ids.append(entry.id)
        time.sleep(0.002)  # distinct millisecond scores: "oldest" is then well defined
    return ids


def test_over_the_cap_the_oldest_go(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store, other = DeadLetters(client, cap=3), a_queue()
    queue = a_queue()
    kept_elsewhere = add(store, other, 2)
    ids = add(store, queue, 5)
    assert store.count(queue) == 3
    assert [e.id for e in store.list(queue)] == ids[:1:-1]  # the three newest, newest first
    for gone in ids[:2]:
        assert store.get(gone) is None and not client.hexists(ENTRIES, gone), "trimmed entry left behind"
    assert store.count(other) == 2 and all(store.get(i) for i in kept_elsewhere), "the cap is per queue"


def test_past_the_retention_entries_go(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store, queue = DeadLetters(client, retention=0.2), a_queue()
    old = add(store, queue, 2)
    time.sleep(0.3)
    new = add(store, queue, 1)
    assert [e.id for e in store.list(queue)] == new
    assert all(store.get(i) is None and not client.hexists(ENTRIES, i) for i in old)


def test_filters_by_queue_task_and_reason_newest_first(redis_url: str) -> None:
    store = DeadLetters(redis.Redis.from_url(redis_url))
    q1, q2 = a_queue(), a_queue()
    echo_failed = add(store, q1, 2)
    unknown = add(store, q1, 1, task="sync.gone", reason=UNKNOWN_TASK)
    invalid = add(store, q2, 2, reason=INVALID_ARGUMENTS)

    assert [e.id for e in store.list(q1)] == [*unknown, *echo_failed[::-1]]
    assert [e.id for e in store.list(q1, task="sync.echo")] == echo_failed[::-1]
    assert [e.id for e in store.list(q1, reason=UNKNOWN_TASK)] == unknown
    assert [e.id for e in store.list(q2, reason=UNKNOWN_TASK)] == []
    assert [e.id for e in store.list(q1, limit=1)] == unknown
    everywhere = [e.id for e in store.list(reason=INVALID_ARGUMENTS, limit=None)]
    assert everywhere[:2] == invalid[::-1] and {q1, q2} <= set(store.queues())

    assert store.purge(q1, task="sync.echo") == 2
    assert [e.id for e in store.list(q1)] == unknown and store.count(q1) == 1
    assert store.remove(unknown[0]) and not store.remove(unknown[0])
    assert store.count(q1) == 0 and store.count(q2) == 2


def test_raw_bytes_are_kept_exactly_and_the_held_message_is_released(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store, queue = DeadLetters(client), a_queue()
    inflight, tag = f"test.inflight:{queue}", "tag-1"
    client.hset(inflight, tag, b"held")
    entry = store.add(
        queue=queue, reason="undecodable", detail="x", raw=b"\x80\x04garbage", inflight=(inflight, tag)
    )
    stored = store.get(entry.id)
    assert stored is not None and stored.raw_bytes == b"\x80\x04garbage" and stored.raw_encoding == "base64"
    assert not client.hexists(
        inflight, tag
    ), "dead-lettering must release the in-flight message in the same step"


def test_over_the_byte_cap_the_oldest_go_and_removal_gives_bytes_back(redis_url: str) -> None:
    """Capped by count alone, ten 98 MB dead letters filled a 1 GB Redis (noeviction)."""
    client = redis.Redis.from_url(redis_url)
    store, queue = DeadLetters(client, max_bytes=5_000), a_queue()
    ids = []
    for i in range(6):
        ids.append(store.add(queue=queue, reason=FAILED, detail="big", raw="x" * 1_500, task_id=str(i)).id)
        time.sleep(0.002)  # distinct millisecond scores: "oldest" is then well defined
    kept = [e.id for e in store.list(queue, limit=None)]
    assert kept == ids[::-1][: len(kept)] and 2 <= len(kept) <= 3, kept  # the newest, under 5,000 bytes
    used = int(cast(bytes, client.hget(BYTES, queue)))
    assert used <= 5_000 and used == sum(int(cast(bytes, client.hget(SIZES, i))) for i in kept)
    assert store.remove(kept[0]) and int(cast(bytes, client.hget(BYTES, queue))) < used
    assert not store.remove(kept[0])  # twice: nothing more given back
    assert store.purge(queue) == len(kept) - 1 and int(cast(bytes, client.hget(BYTES, queue))) == 0


def test_a_message_far_too_large_is_kept_as_its_head_size_and_digest(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store, queue = DeadLetters(client, max_entry_bytes=10_000), a_queue()
    raw = b'{"body": "' + b"y" * 50_000 + b'"}'
    entry = store.add(queue=queue, reason=TOO_LARGE, detail="too large", raw=raw)
    kept = store.get(entry.id)
    assert kept is not None and raw.startswith(kept.raw_bytes) and len(kept.raw_bytes) == HEAD_BYTES
    assert kept.extra["raw_size"] == len(raw) and kept.extra["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert "first 4,096 of 50,012 bytes" in kept.detail
    whole = store.add(queue=queue, reason=TOO_LARGE, detail="fits", raw=raw[:9_000])
    assert store.get(whole.id).raw_bytes == raw[:9_000]

"""Batches against real Redis: each member counted once by task id, each callback pushed once.

The results are stored as a worker stores them (`backend.store_result` with the member's
request, which carries the `x_batch` header), so the Lua step under test is production's.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from celery import states
from celery.app.task import Context

from common import batches
from common.celery_app import current_app
from common.transport import batches as store
from common.transport.dead_letter_store import DeadLetters
from contracts import sync

PROBE_QUEUE = "batchprobe"


def probe(name: str) -> Any:
    return current_app().signature(f"batchprobe.{name}", args=("extra",), queue=PROBE_QUEUE)


def finish(task_id: str, batch_id: str, state: str = states.SUCCESS) -> None:
    request = Context({"id": task_id, store.HEADER: batch_id})
    result: Any = {"ok": True} if state == states.SUCCESS else RuntimeError("failed for good")
    current_app().backend.store_result(task_id, result, state, request=request)


def pushed(redis_client: Any) -> list[dict[str, Any]]:
    """The callback messages on the probe queue, oldest first, with their decoded call."""
    out = []
    for raw in reversed(redis_client.lrange(PROBE_QUEUE, 0, -1)):
        envelope = json.loads(raw)
        args, kwargs, _ = json.loads(envelope["body"])
        out.append({"task": envelope["headers"]["task"], "id": envelope["headers"]["id"], "args": args})
    return out


@pytest.fixture(autouse=True)
def _empty_probe_queue(redis_client: Any) -> None:
    redis_client.delete(PROBE_QUEUE, store.BELL_PREFIX + PROBE_QUEUE)


def members(batch: batches.Batch, n: int) -> list[str]:
    return batch.add_many(sync.echo, [(i,) for i in range(n)])


def test_each_member_counts_once_and_the_callbacks_are_pushed_once_after_the_last(redis_client) -> None:
    with batches.Batch(on_success=probe("ok"), on_complete=probe("done"), description="t") as batch:
        ids = members(batch, 5)
    for task_id in ids[:4]:
        finish(task_id, batch.id)
        finish(task_id, batch.id)  # a second run of the same member
    assert pushed(redis_client) == [], "fired before its last member"
    assert batch.status()["pending"] == 1
    finish(ids[4], batch.id)
    finish(ids[4], batch.id, states.FAILURE)  # a late duplicate's failure: SUCCESS stays
    calls = pushed(redis_client)
    print(f"\n[batch] 5 members, each stored twice: callbacks pushed {[c['task'] for c in calls]}")
    assert [c["task"] for c in calls] == ["batchprobe.done", "batchprobe.ok"]
    status = {"batch_id": batch.id, "total": 5, "succeeded": 5, "failed": 0, "failed_ids": []}
    assert all(c["args"] == [status, "extra"] for c in calls)
    assert redis_client.llen(store.BELL_PREFIX + PROBE_QUEUE) == 1  # consumers woken
    st = batch.status()
    assert (st["total"], st["pending"], st["succeeded"], st["fired"]) == (5, 0, 5, True)
    assert set(st["callbacks"]) == {"on_success", "on_complete"}


def test_failed_members_fire_on_complete_only_with_their_ids(redis_client) -> None:
    with batches.Batch(on_success=probe("ok"), on_complete=probe("done")) as batch:
        ids = members(batch, 4)
    finish(ids[0], batch.id, states.FAILURE)
    finish(ids[1], batch.id, states.REVOKED)
    finish(ids[2], batch.id)
    finish(ids[3], batch.id)
    [call] = pushed(redis_client)
    assert call["task"] == "batchprobe.done"
    assert call["args"][0] == {
        "batch_id": batch.id, "total": 4, "succeeded": 2, "failed": 2, "failed_ids": ids[:2],
    }  # fmt: skip
    assert batch.status()["failed_ids"] == ids[:2]


def test_an_open_batch_fires_nothing_until_closed_and_closing_a_finished_one_fires_it(redis_client) -> None:
    batch = batches.Batch(on_complete=probe("done"))
    batch.create()
    ids = members(batch, 3)
    for task_id in ids:
        finish(task_id, batch.id)
    assert pushed(redis_client) == [] and batch.status()["pending"] == 0
    assert batch.close() is True
    assert batch.close() is False  # closing again fires nothing more
    assert len(pushed(redis_client)) == 1


def test_a_member_can_add_members_until_the_batch_fires(redis_client) -> None:
    with batches.Batch(on_complete=probe("done")) as batch:
        [first] = members(batch, 1)
    more = batches.Batch.reopen(batch.id).add_many(sync.echo, [(1,), (2,)])  # the member discovers work
    finish(first, batch.id)
    assert pushed(redis_client) == []
    for task_id in more:
        finish(task_id, batch.id)
    assert len(pushed(redis_client)) == 1 and batch.status()["total"] == 3
    with pytest.raises(batches.BatchClosedError):
        batches.Batch.reopen(batch.id).add(sync.echo, 3)


def test_a_stranger_or_a_forged_header_counts_nothing(redis_client) -> None:
    with batches.Batch(on_complete=probe("done")) as batch:
        [member] = members(batch, 1)
    finish("not-a-member", batch.id)
    finish(member, "../../etc")  # not a batch id: ignored, the result is stored all the same
    assert current_app().AsyncResult(member).state == states.SUCCESS
    assert batch.status()["pending"] == 1 and pushed(redis_client) == []


def test_a_child_batch_is_one_member_of_its_parent(redis_client) -> None:
    with batches.Batch(on_success=probe("parent_ok")) as parent:
        [own] = members(parent, 1)
        with batches.Batch(on_complete=probe("child_done"), parent=parent) as child:
            kids = members(child, 2)
    finish(own, parent.id)
    finish(kids[0], child.id)
    assert pushed(redis_client) == []
    finish(kids[1], child.id)
    assert [c["task"] for c in pushed(redis_client)] == ["batchprobe.child_done", "batchprobe.parent_ok"]
    assert parent.status()["total"] == 2


def test_a_dead_lettered_member_counts_as_failed_and_fires_on_death_once(redis_client) -> None:
    with batches.Batch(on_complete=probe("done"), on_death=probe("death")) as batch:
        ids = members(batch, 3)
    raw = json.dumps({"headers": {"id": ids[0], "task": "sync.echo", store.HEADER: batch.id}})
    letters = DeadLetters(redis_client)
    letters.add(queue="sync", reason="requeue-limit", detail="x", raw=raw, task="sync.echo", task_id=ids[0])
    letters.add(queue="sync", reason="failed", detail="x", raw=raw, task="sync.echo", task_id=ids[0])
    assert [c["task"] for c in pushed(redis_client)] == ["batchprobe.death"]
    finish(ids[1], batch.id)
    finish(ids[2], batch.id)
    calls = pushed(redis_client)
    assert [c["task"] for c in calls] == ["batchprobe.death", "batchprobe.done"]
    assert calls[1]["args"][0]["failed_ids"] == [ids[0]]
    assert batch.status()["dead"] is True


def test_callbacks_are_checked_against_their_contract() -> None:
    from contracts.declare import InvalidTaskArgumentsError

    with pytest.raises(InvalidTaskArgumentsError, match="BatchStatus"):
        batches.Batch(on_complete=sync.echo.s())  # echo(value: int) cannot take a status


def test_a_members_message_is_the_same_size_in_a_batch_of_10_and_of_10000(redis_client) -> None:
    """Flat encoding: a member's message names its batch, never the other members."""
    sizes = {}
    for n in (10, 10_000):
        redis_client.delete("sync")
        batch = batches.Batch()
        started = time.perf_counter()
        batch.add_many(sync.echo, [(1,)] * n)
        took = time.perf_counter() - started
        sizes[n] = {len(raw) for raw in redis_client.lrange("sync", 0, -1)}
        assert redis_client.llen("sync") == n
        print(f"\n[batch encoding] batch of {n:,}: member message {sizes[n]} bytes, added in {took:.2f} s")
    redis_client.delete("sync")
    # A byte or two of jitter comes from per-message fields (ids, times), not from the batch.
    assert abs(max(sizes[10]) - max(sizes[10_000])) <= 4 and max(sizes[10_000]) - min(sizes[10_000]) <= 4

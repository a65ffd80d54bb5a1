"""`inspect scheduled` lists what waits in the delayed set (`common.transport.broker.scheduled`).

Countdown and ETA tasks wait in Redis (`jobs.delayed`), not in a worker's timer, so Celery's
own command answered `[]` (issue 24). A real `sync` worker answers here; the bounds are
checked against the session's Redis directly.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from common.celery_app import current_app
from common.transport.broker import scripts
from common.transport.broker.scheduled import delayed_requests
from devtools.testing.workers import running

REQUEST_KEYS = {
    "id",
    "name",
    "args",
    "kwargs",
    "type",
    "hostname",
    "time_start",
    "acknowledged",
    "delivery_info",
    "worker_pid",
}  # Celery's `Request.info()`


@pytest.fixture(scope="module")
def worker(data_dir: Path) -> Iterator[str]:
    with running(data_dir, "inspect-scheduled", ["sync"]) as names:
        yield names["sync"]


def scheduled(node: str) -> list[dict[str, Any]]:
    reply: Any = current_app().control.inspect(destination=[node], timeout=5).scheduled() or {}
    assert node in reply, reply
    assert isinstance(reply[node], list), reply[node]
    return reply[node]


def member_of(redis_client: Any, task_id: str) -> tuple[bytes, float]:
    for member, score in redis_client.zrange(scripts.DELAYED, 0, -1, withscores=True):
        if task_id.encode() in member:
            return member, score
    raise AssertionError(f"{task_id} is not in {scripts.DELAYED}")


def test_a_countdown_task_is_listed_until_it_is_due(worker: str, redis_client: Any) -> None:
    from contracts import sync

    sent_at = datetime.now().astimezone()
    result = sync.echo.apply_async((11,), countdown=8)
    member_of(redis_client, result.id)  # waiting in Redis, not in the worker
    entries = [e for e in scheduled(worker) if e["request"]["id"] == result.id]
    assert len(entries) == 1, entries
    entry = entries[0]
    print("\n", json.dumps(entry, indent=1))
    assert set(entry) == {"eta", "priority", "request"} and set(entry["request"]) == REQUEST_KEYS
    request = entry["request"]
    assert request["name"] == request["type"] == "sync.echo"
    assert request["args"] == [11] and request["kwargs"] == {}
    assert request["hostname"] == worker and request["acknowledged"] is False
    assert request["delivery_info"]["routing_key"] == "sync"
    eta = datetime.fromisoformat(entry["eta"])
    assert abs(eta - (sent_at + timedelta(seconds=8))) < timedelta(seconds=3), (entry["eta"], sent_at)
    # The alias Celery registers too.
    dumped = current_app().control.broadcast("dump_schedule", destination=[worker], reply=True, timeout=5)
    assert any(e["request"]["id"] == result.id for e in dumped[0][worker]), dumped

    assert result.get(timeout=40) == 11
    assert all(e["request"]["id"] != result.id for e in scheduled(worker))


def test_only_the_workers_own_queues_are_listed_and_arguments_are_masked(
    worker: str, redis_client: Any
) -> None:
    from contracts import sync

    result = sync.echo.apply_async((12,), countdown=300)
    member, _ = member_of(redis_client, result.id)
    list_key, _, raw = member.decode().partition("\n")
    due = (time.time() + 600) * 1000
    planted = []
    for queue, task_id, call in [
        ("sync", "planted-personal", [[], {"email": "ann@example.org", "doctor_id": 7}, {}]),
        ("emails", "planted-other-queue", [[1], {}, {}]),
    ]:
        message = json.loads(raw)
        message["headers"]["id"] = task_id
        message["body"] = base64.b64encode(json.dumps(call).encode()).decode()
        planted.append(f"{list_key.replace('sync', queue, 1)}\n{json.dumps(message)}")
    redis_client.zadd(scripts.DELAYED, {m: due for m in planted})
    try:
        by_id = {e["request"]["id"]: e for e in scheduled(worker)}
        assert result.id in by_id and "planted-other-queue" not in by_id, sorted(by_id)
        kwargs = by_id["planted-personal"]["request"]["kwargs"]
        assert kwargs["doctor_id"] == 7 and "ann@example.org" not in json.dumps(kwargs), kwargs
    finally:
        redis_client.zrem(scripts.DELAYED, *planted, member)
        current_app().control.revoke(result.id)


def test_the_read_is_bounded(redis_client: Any) -> None:
    """At most `limit` entries, and no more than `scan` members looked at, in pages."""
    message = {
        "headers": {"id": "", "task": "bound.t", "eta": None},
        "properties": {},
        "body": "[[], {}, {}]",
    }
    base = 10**13  # far beyond any real entry's due time, so these sort last

    def member(queue: str, task_id: str) -> str:
        return f"{queue}\n{json.dumps({**message, 'headers': {'id': task_id, 'task': 'x'}})}"

    others = {member("bound-other", f"o{i}"): base + i for i in range(40)}
    ours = {member("bound-ours", f"b{i}"): base + 100 + i for i in range(50)}
    redis_client.zadd(scripts.DELAYED, {**others, **ours})
    try:
        ahead = redis_client.zcount(scripts.DELAYED, "-inf", base - 1)
        got = delayed_requests(redis_client, {"bound-ours"}, "h", limit=10, scan=ahead + 200, page=7)
        assert [e["request"]["id"] for e in got] == [f"b{i}" for i in range(10)]
        # The 40 other entries, due sooner, use up a scan of 45: five of ours are seen.
        got = delayed_requests(redis_client, {"bound-ours"}, "h", limit=1000, scan=ahead + 45, page=7)
        assert len(got) == 5, len(got)
        got = delayed_requests(redis_client, {"bound-ours"}, "h", limit=1000, scan=ahead + 1000, page=7)
        assert len(got) == 50 and got[0]["request"]["args"] == [], got[0]
    finally:
        redis_client.zrem(scripts.DELAYED, *others, *ours)

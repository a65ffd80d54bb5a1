"""Poison messages pushed raw into a queue: the worker stays up, each one is dead-lettered
with its reason, a caller waiting on its result gets FAILURE, and the next good task runs."""

from __future__ import annotations

import base64
import json
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

from common.celery_app import current_app
from common.deadletters import DeadLetteredError, DeadLetters
from contracts import sync
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def worker(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    try:
        w.start(["sync"], env={"sync": {**peers_env, "TASK_MAX_PAYLOAD_BYTES": "20000"}})
        yield w
    finally:
        w.stop()


def envelope(
    task: str = "sync.echo",
    body: Any = ((1,), {}, {}),
    *,
    raw_body: bytes | None = None,
    content_type: str = "application/json",
    **headers: Any,
) -> tuple[str, bytes]:
    """A Celery protocol-2 message as a producer would LPUSH it, with one part spoiled."""
    task_id = str(uuid.uuid4())
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    message = {
        "body": base64.b64encode(data).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "eta": None,
            "expires": None,
            **headers,
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "sync"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return task_id, json.dumps(message).encode()


def nested_header(depth: int) -> tuple[str, bytes]:
    task_id, raw = envelope(extra="<nested>")
    return task_id, raw.replace(b'"<nested>"', b"[" * depth + b"]" * depth)


POISON: dict[str, tuple[str, bytes]] = {
    "body is an object": envelope(body={"x": 1}),
    "body is a string": envelope(body="a string"),
    "body lacks embed": envelope(body=[[1], {}]),
    "body is null": envelope(body=None),
    "timelimit not numbers": envelope(timelimit="x"),
    "eta not a time": envelope(eta="tomorrow"),
    "unknown task": envelope(task="sync.no_such_task"),
    "another service's task": envelope(task="payments.process_payment"),
    "pickle body": envelope(
        raw_body=pickle.dumps(((1,), {}, {})), content_type="application/x-python-serialize"
    ),
    "xml body": envelope(raw_body=b"<args><i>1</i></args>", content_type="application/xml"),
    "truncated JSON body": envelope(raw_body=b'[[1], {"a": '),
    "argument breaks the contract": envelope(body=[["not-an-int"], {}, {}]),
    "missing argument": envelope(body=[[], {}, {}]),
    "too large": envelope(body=[[1], {"pad": "x" * 30000}, {}]),
    # A body nested 30,000 levels: json.loads raised RecursionError into kombu's loop, the
    # worker exited, and the redelivered message killed each restarted worker in turn.
    "body nested 30,000 levels": envelope(raw_body=b"[" * 30_000 + b"]" * 30_000),
    "headers nested 5,000 levels": nested_header(5_000),
    # Celery's built-ins ran other tasks with unchecked arguments, or stored what they got.
    "celery.map": envelope("celery.map", [[{"task": "sync.echo"}, [["not-an-int"]]], {}, {}]),
    "celery.starmap": envelope("celery.starmap", [[{"task": "payments.process_payment"}, [["1;"]]], {}, {}]),
    "celery.accumulate": envelope("celery.accumulate", [["Ada Lovelace"], {}, {}]),
    "timelimit negative": envelope(timelimit=[-1, None]),
}
EXPECTED_REASON = {
    "body is an object": "malformed",
    "body is a string": "malformed",
    "body lacks embed": "malformed",
    "body is null": "malformed",
    "timelimit not numbers": "malformed",
    "eta not a time": "malformed",
    "unknown task": "unknown-task",
    "another service's task": "unknown-task",
    "pickle body": "content-type",
    "xml body": "content-type",
    "truncated JSON body": "malformed",
    "argument breaks the contract": "invalid-arguments",
    "missing argument": "invalid-arguments",
    "too large": "too-large",
    "body nested 30,000 levels": "malformed",
    "headers nested 5,000 levels": "undecodable",
    "celery.map": "unknown-task",
    "celery.starmap": "unknown-task",
    "celery.accumulate": "unknown-task",
    "timelimit negative": "malformed",
}
RAW_ITEMS = {  # not even an envelope: no task id to fail
    "not JSON": b"\x80\x04garbage",
    "JSON but no envelope": b'{"x": 1}',
    "a JSON string": b'"a string"',
    "JSON null": b"null",
}


def test_every_poison_shape_is_dead_lettered_and_the_worker_goes_on(worker, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = DeadLetters(client)
    before = {e.id for e in store.list("sync", limit=None)}
    for raw in RAW_ITEMS.values():
        client.lpush("sync", raw)
    for _, raw in POISON.values():
        client.lpush("sync", raw)
    # The next good task runs: the worker did not crash or stall on what came before it.
    assert sync.echo.delay(7).get(timeout=30) == 7
    assert worker.procs["sync"].running, "a poison message stopped the worker"

    new = [e for e in store.list("sync", limit=None) if e.id not in before]
    by_task_id = {e.task_id: e for e in new if e.task_id}
    report = []
    for name, (task_id, raw) in POISON.items():
        entry = by_task_id.get(task_id)
        assert entry is not None, f"{name}: not dead-lettered"
        assert entry.reason == EXPECTED_REASON[name], f"{name}: {entry.reason} ({entry.detail})"
        assert entry.raw_bytes == raw, f"{name}: raw message not kept as sent"
        assert entry.queue == "sync" and entry.worker and entry.time > 0
        # A caller waiting on this task gets an answer instead of waiting forever.
        result = AsyncResult(task_id, app=current_app())
        assert result.state == "FAILURE", f"{name}: result {result.state}"
        with pytest.raises(DeadLetteredError):
            result.get(timeout=5)
        report.append(f"{name}: {entry.reason}")
    raw_entries = sorted(e.raw_bytes for e in new if not e.task_id)
    assert raw_entries == sorted(RAW_ITEMS.values())
    assert all(e.reason == "undecodable" for e in new if not e.task_id)
    print(f"\n[poison] {len(POISON) + len(RAW_ITEMS)} poison messages, all dead-lettered; worker alive:")
    print("\n".join(f"  {line}" for line in report))
    # Nothing is left half-taken: the queue is empty and nothing is held in flight.
    assert client.llen("sync") == 0

    def held() -> int:  # the good task's ack follows its result by a moment
        return sum(client.hlen(k) for k in client.scan_iter("jobs.inflight:*"))

    wait_until(lambda: held() == 0, timeout=10)


def stored_bytes(client: redis.Redis) -> int:
    """What Redis keeps in its keys (MEMORY USAGE of each), not buffers it has yet to trim."""
    return sum(client.memory_usage(key) or 0 for key in client.scan_iter(count=1000))


def test_a_huge_message_is_kept_as_its_head_and_size(worker, redis_url: str) -> None:
    """A 98 MB message was kept whole for 7 days; ten of them filled a 1 GB Redis."""
    client = redis.Redis.from_url(redis_url)
    store = DeadLetters(client)
    task_id, raw = envelope(body=[[1], {"pad": "x" * 73_000_000}, {}])
    stored_before = stored_bytes(client)
    client.lpush("sync", raw)
    with ping_latency(redis_url) as worst:  # how long other clients wait while it is taken
        assert sync.echo.delay(8).get(timeout=60) == 8  # and the worker went on
    entry = next(e for e in store.list("sync", limit=None) if e.task_id == task_id)
    kept = len(entry.raw_bytes)
    assert entry.reason == "too-large" and entry.extra["raw_size"] == len(raw)
    assert kept <= 4096 and raw.startswith(entry.raw_bytes)
    stored_after = stored_bytes(client)
    print(f"\n[poison] a {len(raw) / 1e6:.0f} MB message: dead-lettered, {kept:,} bytes kept; "
          f"Redis keys hold {stored_before / 1e6:.2f} MB before, {stored_after / 1e6:.2f} MB after; "
          f"slowest PING while it was taken {worst[0] * 1000:.0f} ms")  # fmt: skip
    assert stored_after - stored_before < 1_000_000


@contextmanager
def ping_latency(redis_url: str) -> Iterator[list[float]]:
    """PINGs Redis every 10 ms in a thread; yields a one-item list, the slowest, filled on exit."""
    worst, stop = [0.0], threading.Event()

    def ping() -> None:
        pinger = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            started = time.monotonic()
            pinger.ping()
            worst[0] = max(worst[0], time.monotonic() - started)
            stop.wait(0.01)

    thread = threading.Thread(target=ping, daemon=True)
    thread.start()
    try:
        yield worst
    finally:
        stop.set()
        thread.join(5)

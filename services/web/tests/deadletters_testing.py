"""Dead letters for the web tests: real messages, spoiled ones, stored as the transport stores them."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, cast

import redis

from common.celery_app import current_app
from common.deadletters import DeadLetter, DeadLetters, Rejection
from common.transport.intake import settle


def a_queue() -> str:
    """A queue name of the test's own: the store is shared by the whole session."""
    return f"q-{uuid.uuid4().hex[:8]}"


def real_message(task: str, args: list[Any], **options: Any) -> tuple[str, bytes]:
    """A message exactly as a producer puts it on a queue: published to a queue nobody reads."""
    parking = f"parking-{uuid.uuid4().hex[:8]}"
    result = current_app().send_task(task, args=args, queue=parking, **options)
    client = redis.Redis.from_url(current_app().conf.broker_url)
    try:  # the list is the queue's name, with a priority suffix for priorities above 0
        raws = [client.rpop(key) for key in client.scan_iter(match=f"{parking}*", _type="list")]
    finally:
        client.close()
    assert len(raws) == 1 and raws[0] is not None
    return result.id, cast(bytes, raws[0])


def envelope(
    body: Any, *, content_type: str = "application/json", task: str = "sync.echo"
) -> tuple[str, bytes]:
    """A protocol-2 message built by hand, for shapes no producer would send."""
    task_id = str(uuid.uuid4())
    message = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"lang": "py", "task": task, "id": task_id, "retries": 0, "timelimit": [None, None]},
        "properties": {"body_encoding": "base64", "delivery_info": {"routing_key": "sync"}, "priority": 0},
    }
    return task_id, json.dumps(message).encode()


def dead(
    store: DeadLetters,
    queue: str,
    reason: str,
    raw: bytes,
    task_id: str | None,
    *,
    detail: str = "test",
    task: str = "sync.echo",
) -> DeadLetter:
    """Store a dead letter as the transport does, FAILURE included for a caller waiting on it.

    Replay sends only what was taken from its contract's queue: a message to replay goes
    under its real queue (`sync` for sync.echo), not `a_queue()`.
    """
    entry = store.add(queue=queue, reason=reason, detail=detail, raw=raw, task=task, task_id=task_id)
    if task_id:
        settle(Rejection(reason, "dead-lettered by the test", task, task_id))
    return entry


def stored_result(task_id: str) -> dict[str, Any]:
    """The result store's record, not this process's cache (Celery caches a final state it read)."""
    return current_app().backend.get_task_meta(task_id, cache=False)

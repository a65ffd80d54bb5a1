"""`celery inspect scheduled` answered from the delayed set, in Celery's shape.

Stock Celery keeps a countdown/ETA task in the worker that received it (its timer) until it
is due, and `inspect scheduled` lists that timer. Our transport keeps such a message in Redis
instead, in the zset `jobs.delayed` (member "<queue list key>\\n<raw message>", score the due
time in ms; `common.transport.broker.scripts`), and moves it to its queue when due: no worker
holds it, so Celery's command answered `[]` and Flower's scheduled view was empty.

Each worker answers with the delayed messages of the queues it consumes, its own share.
Workers of the same service consume the same queue, so each of them lists the same entries:
a caller that asks every worker (Flower, `celery inspect scheduled`) sees one entry per
worker of that queue and should count distinct `request.id`s. No worker is elected to answer
alone: whichever worker is asked (`--destination`) shows what its queues have waiting, and
the answer does not depend on which workers are alive. The few messages a worker still
holds in Celery's own timer (an ETA less than 50 ms away when sent goes straight to its
queue) are listed too, first.

The answer is a list of `{"eta", "priority", "request": {id, name, args, kwargs, type,
hostname, time_start, acknowledged, delivery_info, worker_pid}}`, soonest first, as Celery's.
`hostname` is the answering worker (the one that would run it), `time_start` and
`worker_pid` are None and `acknowledged` False: nobody has started it. Arguments are masked
as logs are (`common.observability`'s `mask`: personal keys, emails and the like), though a contract's
payload holds ids and flags.

Bounded: the zset is read soonest first in pages (`ZRANGE` by index, `PAGE` members each),
looking at no more than `SCAN` members, and the answer stops at `LIMIT` entries; the whole
set is never loaded. Entries of other queues count against `SCAN`, so with more than that
many other messages due sooner a worker lists fewer than it has. Entries promoted while the
pages are read may shift a page: the answer is a snapshot, not a transaction. If Redis
cannot be read the answer is `{"error": ...}` (Celery's shape for a failed command), never
an empty list that would claim nothing is due.

Registered when a worker runs (`register()`, a hook in `common.process_hooks`), before the
remote-control allow-list is applied; `scheduled` is among the read-only commands every worker obeys.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from celery.worker.control import Panel, _iter_schedule_requests  # type: ignore[attr-defined]

from common.masking import mask
from common.settings import get_settings
from common.transport.broker import ownership, scripts
from common.transport.protocol import MalformedMessage, task_call
from common.transport.tls import redis_from_url

logger = logging.getLogger(__name__)

LIMIT = 1000  # entries in one answer
ETA_TIMER_PRIORITY = 6
PAGE = 500  # zset members per ZRANGE
SCAN = 10_000  # zset members looked at per answer, every queue's
PRIORITY_SEP = "\x06\x16"  # kombu: `<queue>\x06\x16<priority>` for priorities other than 0


def delayed_requests(
    client: Any, queues: set[str], hostname: str, *, limit: int = LIMIT, scan: int = SCAN, page: int = PAGE
) -> list[dict[str, Any]]:
    """The delayed messages of `queues`, soonest first, in `inspect scheduled`'s shape."""
    found: list[dict[str, Any]] = []
    start = 0
    while len(found) < limit and start < scan:
        members = client.zrange(scripts.DELAYED, start, min(start + page, scan) - 1, withscores=True)
        if not members:
            break
        start += len(members)
        for member, due_ms in members:
            entry = _entry(member, due_ms, queues, hostname)
            if entry is not None:
                found.append(entry)
                if len(found) >= limit:
                    break
    return found


def _entry(member: bytes | str, due_ms: float, queues: set[str], hostname: str) -> dict[str, Any] | None:
    text = member.decode("utf-8", "replace") if isinstance(member, bytes) else member
    list_key, sep, raw = text.partition("\n")
    if not sep or list_key.partition(PRIORITY_SEP)[0] not in queues:
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None  # the worker dead-letters it when it is due; nothing to show
    headers = message.get("headers") if isinstance(message, dict) else None
    if not isinstance(headers, dict) or not headers.get("id"):
        return None
    properties = cast(
        "dict[str, Any]", message.get("properties") if isinstance(message.get("properties"), dict) else {}
    )
    priority = properties.get("priority") or 0
    delivery = cast(
        "dict[str, Any]",
        properties.get("delivery_info") if isinstance(properties.get("delivery_info"), dict) else {},
    )
    args, kwargs = _call(message)
    eta = headers.get("eta")
    if not isinstance(eta, str):
        eta = datetime.fromtimestamp(due_ms / 1000, tz=UTC).isoformat()
    name = headers.get("task")
    return {
        "eta": eta,
        # Celery's answer gives the timer entry's priority, 6 for every ETA task
        # (celery.worker.strategy); the message's own is in delivery_info.
        "priority": ETA_TIMER_PRIORITY,
        "request": {
            "id": headers["id"],
            "name": name,
            "args": args,
            "kwargs": kwargs,
            "type": name,
            "hostname": hostname,
            "time_start": None,
            "acknowledged": False,
            "delivery_info": {
                "exchange": delivery.get("exchange"),
                "routing_key": delivery.get("routing_key"),
                "priority": priority,
                "redelivered": bool(delivery.get("redelivered") or headers.get("redelivered")),
            },
            "worker_pid": None,
        },
    }


def _call(message: dict[str, Any]) -> tuple[Any, Any]:
    """The masked `(args, kwargs)` of the message, or `(None, None)` if its body is not a call."""
    try:
        args, kwargs, _ = task_call(message)
    except (MalformedMessage, ValueError, TypeError):
        return None, None
    return mask(args), mask(kwargs)


def _consumed_queues(consumer: Any) -> set[str]:
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        return {q.name for q in task_consumer.queues}
    return set(consumer.app.amqp.queues.consume_from or ())


@lru_cache(maxsize=2)
def _client(url: str) -> Any:
    return redis_from_url(url, socket_connect_timeout=2, socket_timeout=2)


def _redis(consumer: Any) -> Any:
    """The broker's Redis: the owner of the channel this worker consumes on, else the
    process's first owner, else a client on REDIS_URL."""
    channel = getattr(getattr(consumer, "connection", None), "default_channel", None)
    owner = getattr(channel, "owner", None) or ownership.current_owner()
    if isinstance(owner, ownership.Owner):
        return owner.client
    return _client(get_settings().redis_url)


def scheduled(state: Any, **kwargs: Any) -> list[dict[str, Any]] | dict[str, str]:
    """List of currently scheduled ETA/countdown tasks (from the delayed set)."""
    consumer = state.consumer
    held = list(_iter_schedule_requests(consumer.timer)) if getattr(consumer, "timer", None) else []
    for entry in held:  # Celery's own, from its timer: mask the arguments the same way
        request = entry["request"]
        request["args"], request["kwargs"] = mask(request.get("args")), mask(request.get("kwargs"))
    seen = {entry["request"].get("id") for entry in held}
    try:
        delayed = delayed_requests(
            _redis(consumer), _consumed_queues(consumer), consumer.hostname, limit=max(0, LIMIT - len(held))
        )
    except Exception as exc:  # Redis away: an error (Celery's shape for one), not an empty schedule
        logger.warning("inspect scheduled: could not read the delayed set (%s)", type(exc).__name__)
        return {"error": f"could not read the delayed set ({type(exc).__name__})"}
    return held + [e for e in delayed if e["request"]["id"] not in seen]


def register() -> None:
    """Make this process's workers answer `scheduled` (and its alias) from the delayed set.

    Installed before the remote control policy (`common.remote_control`), which keeps a command
    by name (`common.process_hooks` orders them). Idempotent.
    """
    if Panel.data.get("scheduled") is scheduled:
        return
    Panel.register(scheduled, name="scheduled", alias="dump_schedule", type="inspect")  # type: ignore[call-arg]

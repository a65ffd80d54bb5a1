"""A canvas's messages as the outbox keeps them: built once at the send, published unchanged.

A chain, group or chord is sent by Celery's canvas code, which builds each message itself
(task ids, `chain`/`chord` embedded in the body, group ids and indexes) and, for a chord,
sets the chord up in the result backend first. `common.canvas` captures those messages and
the setup instead of letting them reach Redis; this module turns one into an outbox row's
JSON (`encode`) and publishes a kept one (`replay`), its setup first, so the relay publishes
exactly what Celery would have published at the send. Imports nothing of the outbox's store.
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery
from celery.app.amqp import task_message
from celery.canvas import signature
from celery.result import result_from_tuple
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from common.outbox.options import OUTBOX_HEADER
from common.publishing import BROKER_ERRORS, Batch, InvalidTaskOptionsError, broker_unavailable

MESSAGE_KEY = "message"  # the row's options hold the whole message under this key

# send_task_message's options that say how to publish, not what: the relay uses its own.
_NOT_KEPT = frozenset(
    {"retry", "retry_policy", "declare", "event_dispatcher", "timeout", "confirm_timeout", "headers", "queue"}
)


def encode(
    name: str, message: Any, options: dict[str, Any], setup: list[list[Any]]
) -> tuple[str, str | None, str, dict[str, Any]]:
    """(task id, queue, `[args, kwargs]` as JSON, the row's options) of one captured message.

    `message` and `options` are what Celery handed `send_task_message`; `setup` the result
    backend calls to make before publishing it. Every message carries the `x_outbox` header,
    so the workers run one copy of a message published twice.
    """
    headers, properties, body, _sent_event = message
    headers = {**headers, **(options.get("headers") or {}), OUTBOX_HEADER: True}
    queue = options.get("queue")
    queue_name = getattr(queue, "name", queue)
    publish = {}
    for key, value in options.items():
        if key in _NOT_KEPT or value is None:
            continue
        publish[key] = getattr(value, "name", value) if key == "exchange" else value
    kept = {
        "headers": headers,
        "properties": properties,
        "body": list(body),
        "queue": queue_name,
        "publish": publish,
        "setup": setup,
    }
    try:
        as_json = json.loads(kombu_dumps(kept))  # kombu's type tags kept (datetimes, decimals)
    except (TypeError, ValueError) as exc:
        raise InvalidTaskOptionsError(
            f"{name}: the canvas message cannot be kept in the outbox as JSON ({exc})"
        ) from None
    args, kwargs = list(body[0]), dict(body[1])
    return headers["id"], queue_name, kombu_dumps([args, kwargs]), {MESSAGE_KEY: as_json}


def is_captured(options: dict[str, Any]) -> bool:
    return isinstance(options, dict) and MESSAGE_KEY in options


def replay(app: Celery, batch: Batch, name: str, options: dict[str, Any]) -> None:
    """Publish a kept canvas message into `batch`, after its result-backend setup."""
    kept = kombu_loads(json.dumps(options[MESSAGE_KEY]))
    for call, arguments in kept.get("setup") or []:
        try:
            _set_up(app, call, arguments)
        except BROKER_ERRORS as exc:  # the result backend is the broker's Redis: an outage
            raise broker_unavailable(app, exc, name) from exc
    message = task_message(kept["headers"], kept["properties"], tuple(kept["body"]), None)
    batch.send_message(name, message, queue=kept["queue"], **kept["publish"])


def _set_up(app: Celery, call: str, arguments: list[Any]) -> None:
    """What the chord did in the result backend before its header was published."""
    if call == "set_chord_size":
        group_id, size = arguments
        app.backend.set_chord_size(group_id, int(size))
    elif call == "apply_chord":
        header, body, options = arguments
        restored: Any = result_from_tuple(header, app)  # a GroupResult
        app.backend.apply_chord((restored.id, restored.results), signature(body, app=app), **options)
    else:
        raise ValueError(f"unknown result-backend setup {call!r}")

"""The publish options a kept task carries: encoded to JSON when kept, decoded when published.

Shared by the store (which keeps them) and the relay (which publishes them); imports nothing
of the outbox, so neither needs the other for it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from common.publishing import InvalidTaskOptionsError

# How a message is sent, not what it is: never stored, the relay sends with its own.
TRANSPORT_ONLY = frozenset(
    {"producer", "connection", "publisher", "router", "result_cls", "add_to_parent", "retry", "retry_policy"}
)
OUTBOX_HEADER = "x_outbox"


def encode_options(options: dict[str, Any], *, default_queue: str) -> tuple[str, dict[str, Any]]:
    """The queue and the JSON-safe options to keep; relative times become absolute.

    A countdown or an `expires` in seconds counts from the send, not from a publish by the
    relay minutes later. Raise `InvalidTaskOptionsError` for an option JSON cannot hold.
    """
    queue = options.get("queue") or default_queue
    if not isinstance(queue, str):
        raise InvalidTaskOptionsError(f"queue={queue!r}: pass the queue's name, a string")
    now = datetime.now(UTC)
    kept: dict[str, Any] = {}
    for key, value in options.items():
        if key in TRANSPORT_ONLY or key in ("queue", "countdown") or value is None:
            continue
        if key in ("eta", "expires"):
            kept[key] = _instant(key, value, now)
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise InvalidTaskOptionsError(
                f"option {key}={type(value).__name__} cannot be kept in the outbox (it is stored as "
                "JSON until published). Pass JSON values, or publish at once with outbox=False."
            ) from None
        kept[key] = value
    if options.get("countdown") is not None:  # as in Celery, a countdown replaces an eta
        kept["eta"] = _instant("countdown", options["countdown"], now)
    return queue, kept


def _instant(key: str, value: Any, now: datetime) -> str:
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)  # Celery's timezone is UTC
    elif isinstance(value, int | float) and not isinstance(value, bool):
        when = now + timedelta(seconds=value)
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidTaskOptionsError(f"{key}={value!r} is not an ISO 8601 timestamp") from None
    else:
        raise InvalidTaskOptionsError(f"{key}: pass seconds or a datetime, not {type(value).__name__}")
    return when.isoformat()


def decode_options(options: dict[str, Any]) -> dict[str, Any]:
    """The kept options as `send_task` takes them, marked as published from the outbox."""
    out = dict(options)
    for key in ("eta", "expires"):
        if isinstance(out.get(key), str):
            out[key] = datetime.fromisoformat(out[key])
    out["headers"] = {**(out.get("headers") or {}), OUTBOX_HEADER: True}
    return out

"""Reading a Celery protocol-2 message as data: the body's `[args, kwargs, embed]`.

The worker's intake (before a task runs) and dead-letter replay (before a message is sent
again) read stored messages the same way, so they agree on what is malformed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any


class MalformedMessage(ValueError):
    """The envelope's body is not what Celery's protocol 2 requires; the text says why."""


# Deeper than any real message (a canvas of nested chords is a few dozen levels), far below
# Python's recursion limit: code after the intake (pydantic, kombu, Celery, json.dumps)
# recurses per level, and a message nested 100,000 deep made the consumer's loop die of
# RecursionError, a crash loop on redelivery.
MAX_DEPTH = 100


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON data nests more than `limit` levels; iterative, so it cannot recurse itself."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def loads_bounded(text: bytes | str, object_hook: Callable[[dict[str, Any]], Any] | None = None) -> Any:
    """`json.loads`, refusing what nests deeper than MAX_DEPTH (`MalformedMessage`, never
    RecursionError) and JSON's non-standard NaN and Infinity (`ValueError`)."""
    try:
        value = json.loads(text, parse_constant=_no_constant, object_hook=object_hook)
    except RecursionError:
        raise MalformedMessage(f"the JSON nests deeper than {MAX_DEPTH} levels") from None
    if isinstance(value, dict | list) and too_deep(value):
        raise MalformedMessage(f"the JSON nests deeper than {MAX_DEPTH} levels")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_body(envelope: dict[str, Any]) -> Any:
    """The envelope's body as JSON data, base64 undone."""
    body = envelope.get("body")
    properties = envelope.get("properties")
    if isinstance(properties, dict) and properties.get("body_encoding") == "base64":
        if not isinstance(body, str):
            raise MalformedMessage("the base64 body is not a string")
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("the body is not valid base64") from None
    if not isinstance(body, bytes | str):
        return body
    try:
        return loads_bounded(body)
    except MalformedMessage:
        raise
    except (ValueError, UnicodeDecodeError):
        raise MalformedMessage("the body is not JSON") from None


def task_call(envelope: dict[str, Any]) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """`(args, kwargs, embed)` from the body; `MalformedMessage` unless it has that shape."""
    body = decode_body(envelope)
    if not (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and isinstance(body[1], dict)
        and isinstance(body[2], dict | None)
    ):
        raise MalformedMessage("the body is not [args, kwargs, embed]")
    return body[0], body[1], body[2] or {}

"""Reading a Celery protocol-2 message as data: the body's `[args, kwargs, embed]`.

The worker's intake (before a task runs) and dead-letter replay (before a message is sent
again) read stored messages the same way, so they agree on what is malformed.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class MalformedMessage(ValueError):
    """The envelope's body is not what Celery's protocol 2 requires; the text says why."""


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
        return json.loads(body)
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

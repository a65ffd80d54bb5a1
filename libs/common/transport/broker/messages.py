"""Reading a raw queue item without trusting it: its due time, its task's name and id, and
the same item marked redelivered. Every function here survives any bytes (a message may be
anything a client pushed), so the transport can call them before the intake judges it."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

# A due time this close is not worth a round trip through the delayed set.
DELAY_THRESHOLD_MS = 50


def due_ms(message: dict[str, Any]) -> int | None:
    """The message's ETA in epoch ms when it lies in the future, else None."""
    headers = message.get("headers")
    eta = headers.get("eta") if isinstance(headers, dict) else None
    if not isinstance(eta, str):
        return None
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return None  # the worker dead-letters a malformed header on receipt
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    due = int(when.timestamp() * 1000)
    return due if due - time.time() * 1000 > DELAY_THRESHOLD_MS else None


def marked_redelivered(raw: bytes, ceiling: int) -> bytes:
    """The message with `redelivered` set in its headers and its delivery_info, as kombu's
    own Redis transport sets it on a restore; unchanged when it cannot be decoded (the
    worker then dead-letters it on receipt) or is over `ceiling` bytes (0: no ceiling).

    Decoded and encoded again by Python's json, which keeps every value as it was (Lua's
    cjson would not: `[]` becomes `{}`, numbers change); only a message that went back on
    its queue pays for it.
    """
    if ceiling and len(raw) > ceiling:
        return raw
    try:
        payload = json.loads(raw)
        headers, properties = payload.get("headers"), payload.get("properties")
        if not isinstance(properties, dict):
            return raw
        if isinstance(headers, dict):
            headers["redelivered"] = True
        info = properties.get("delivery_info")
        if not isinstance(info, dict):
            properties["delivery_info"] = info = {}
        info["redelivered"] = True
        try:  # non-ASCII text kept as it was, not escaped (which could grow it sixfold)
            return json.dumps(payload, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate escape: only escaped JSON can hold it
            return json.dumps(payload).encode()
    except Exception:  # noqa: BLE001 - not JSON, too deep, not UTF-8: left to the intake
        return raw


def names_in(raw: bytes, ceiling: int) -> tuple[str | None, str | None]:
    """The task name and id a message carries, for its dead letter; (None, None) if unknown."""
    if ceiling and len(raw) > ceiling:
        return None, None
    try:
        headers = json.loads(raw).get("headers")
    except Exception:  # noqa: BLE001 - not a message we can read
        return None, None
    task = headers.get("task") if isinstance(headers, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return (task if isinstance(task, str) else None), (task_id if isinstance(task_id, str) else None)


_NAMED = re.compile(rb'"(task|id)": ?"([\w.:-]{1,200})"')


def task_named_in(raw: bytes) -> tuple[str | None, str | None]:
    """The task name and id of a message that cannot be decoded whole (too large, too deep):
    read from its first and last 16 KiB only, where kombu's JSON puts the headers."""
    found: dict[bytes, bytes] = {}
    for part in (raw[:16384], raw[-16384:]):
        for key, value in _NAMED.findall(part):
            found.setdefault(key, value)
    task, task_id = found.get(b"task"), found.get(b"id")
    return (task.decode() if task else None), (task_id.decode() if task_id else None)


def task_of(payload: Any) -> tuple[str | None, str | None]:
    headers = payload.get("headers") if isinstance(payload, dict) else None
    if not isinstance(headers, dict):
        return None, None
    task, task_id = headers.get("task"), headers.get("id")
    return (task if isinstance(task, str) else None), (task_id if isinstance(task_id, str) else None)

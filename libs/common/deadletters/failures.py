"""Tasks that failed for good go to the dead letters, where the task opts in.

Retries exhausted against a CRM that stayed down, a mail server that kept refusing: the
work is still owed. A task declared with `dead_letter=True` (e.g. `implements(app,
contract, dead_letter=True)`) keeps its final failure in its queue's dead letters as a
protocol-2 message, so an operator can replay it once the cause is fixed. Tasks whose
failure is a business outcome (a declined card) do not opt in.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import uuid
from typing import Any

from redis.exceptions import RedisError

from common.masking import mask_text
from common.observability import failure_hooks
from common.observability.outcomes import is_outcome
from common.settings import get_settings
from common.transport import batches
from common.transport.dead_letter_store import FAILED, DeadLetters
from common.transport.tls import redis_from_url

logger = logging.getLogger(__name__)
_store: DeadLetters | None = None


def _dead_letters() -> DeadLetters:
    global _store
    if _store is None:
        s = get_settings()
        client = redis_from_url(s.redis_url, socket_timeout=s.broker_socket_timeout)
        _store = DeadLetters(
            client,
            cap=s.dead_letter_cap,
            retention=s.dead_letter_retention,
            max_bytes=s.dead_letter_max_bytes,
        )
    return _store


def as_message(task: Any, task_id: str, args: Any, kwargs: Any) -> bytes:
    """The failed call as a Celery protocol-2 message, with its canvas links, for replay."""
    request = task.request
    embed = {
        "callbacks": request.callbacks,
        "errbacks": request.errbacks,
        "chain": request.chain,
        "chord": request.chord,
    }
    body = json.dumps([list(args or ()), dict(kwargs or {}), embed]).encode()
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task.name,
            "id": task_id,
            "retries": request.retries or 0,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "group": request.group,
            "timelimit": [None, None],
            "eta": None,
            "expires": None,
            # A batch member's dead letter counts it as failed and fires its batch's on_death
            # (`common.transport.batches`); a replay runs it again, counted once all the same.
            **({batches.HEADER: batch} if (batch := batches.batch_of(request)) else {}),
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {
                "exchange": "",
                "routing_key": (request.delivery_info or {}).get("routing_key", ""),
            },
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


def keep_final_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    if not getattr(sender, "dead_letter", False) or task_id is None or is_outcome(sender, exception):
        return
    queue = (sender.request.delivery_info or {}).get("routing_key") or "unknown"
    try:
        entry = _dead_letters().add(
            queue=queue,
            reason=FAILED,
            detail=mask_text(f"{type(exception).__name__}: {exception}")
            + f" (after {sender.request.retries or 0} retries)",
            raw=as_message(sender, task_id, args, kwargs),
            worker=f"{socket.gethostname()}:{os.getpid()}",
            task=sender.name,
            task_id=task_id,
        )
    except RedisError:
        logger.exception("Could not dead-letter failed task %s[%s]", sender.name, task_id)
        return
    logger.warning("Task %s[%s] failed for good; kept as dead letter %s", sender.name, task_id, entry.id)


def install() -> None:
    failure_hooks.add(keep_final_failure)

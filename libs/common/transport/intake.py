"""What a worker checks on receipt, before Celery sees a message: the transport's intake.

Celery's consumer crashes the whole worker on some malformed messages (a body that is not
`[args, kwargs, embed]`, a `timelimit` that is not numbers), silently drops others (unknown
task names, pickle), and runs a task whatever its arguments. Here every message is checked
against Celery's protocol 2 and against the task's contract; one that fails is
dead-lettered by the transport with the reason, and its result becomes FAILURE so a
caller's `.get()` returns. A task revoked in Redis (`common.transport.revocation`) is not
dead-lettered: its result becomes REVOKED and the transport drops it.

Named by the `intake` broker transport option of worker apps (`common.celery_config`).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from typing import Any, cast

from celery import current_app, states
from celery.app.task import Context
from kombu.utils.json import dumps

from common.settings import get_settings
from common.transport import locks, protocol, revocation
from common.transport.dead_letter_store import (
    CONTENT_TYPE,
    DUPLICATE,
    INVALID_ARGUMENTS,
    MALFORMED,
    REVOKED,
    TOO_LARGE,
    UNKNOWN_TASK,
    DeadLetteredError,
    Rejection,
)
from contracts.declare import InvalidTaskArgumentsError, UnknownTaskError, lookup

logger = logging.getLogger(__name__)

OUTBOX_HEADER = "x_outbox"
_SEEN_PREFIX = "jobs.outbox.seen:"
_SEEN_TTL = 7 * 24 * 3600


def _app() -> Any:
    """The worker's own app: the intake runs only inside a worker, whose app is the default."""
    return cast(Any, current_app)._get_current_object()


def check(payload: dict[str, Any], queue: str) -> None:
    """Raise `Rejection` unless this worker can run the message as it stands."""
    headers = payload.get("headers") or {}
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not isinstance(task_id, str):
        raise Rejection(MALFORMED, "headers lack a task name and id (Celery protocol 2)")

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(reason, detail, task, task_id)

    content_type = payload.get("content-type")
    if content_type != "application/json":
        raise reject(CONTENT_TYPE, f"content type {content_type!r}; only application/json is accepted")
    try:
        args, kwargs, embed = protocol.task_call(payload)
    except protocol.MalformedMessage as exc:
        raise reject(MALFORMED, str(exc)) from None
    _refuse_if_revoked(task, task_id, headers, embed)
    _check_headers(headers, reject)
    size = len(dumps([args, kwargs]).encode())
    limit = get_settings().task_max_payload_bytes
    if size > limit:  # measured as the producer does (common.calls.encoded_payload)
        raise reject(TOO_LARGE, f"arguments of {size:,} bytes as JSON, over TASK_MAX_PAYLOAD_BYTES={limit:,}")
    app = _app()
    if task not in app.tasks:
        raise reject(UNKNOWN_TASK, f"no task {task!r} on queue {queue!r} (service {app.main!r})")
    if task.startswith("celery.") and task not in builtins_in_use(app):
        # celery.map/starmap/chunks run any task in-process with arguments nobody checked;
        # celery.accumulate stores what it is sent as a result.
        raise reject(
            UNKNOWN_TASK, f"{task!r} is one of Celery's built-in tasks, which this platform never sends"
        )
    try:
        # Tolerant of dict keys this version does not know: a newer producer may add them.
        lookup(task).check(tuple(args), kwargs, tolerant=True)
    except UnknownTaskError:
        pass  # registered without a contract (a built-in above): Celery checks the call
    except InvalidTaskArgumentsError as exc:
        raise reject(INVALID_ARGUMENTS, str(exc)) from None
    _bound_time_limits(headers, app.tasks[task])
    # Celery logs a task under its `shadow` name: a message could have passed for another task.
    headers.pop("shadow", None)
    if headers.get(OUTBOX_HEADER) and _already_seen(payload, headers, task_id):
        logger.info("Dropped a second copy of task %s republished by the outbox relay", task_id)
        raise Rejection(DUPLICATE, "second copy from the outbox relay", task, task_id)


def _refuse_if_revoked(task: str, task_id: str, headers: dict[str, Any], embed: Any) -> None:
    """Store REVOKED and refuse a revoked task, wherever it waited (its queue, the delayed set).

    REVOKED is stored before the transport acknowledges: a crash in between redelivers the
    message, which is refused again. A task not revoked is stamped with the time of this
    check, so its start asks again only if it then waited in the worker's prefetch.
    """
    if revocation.is_revoked(locks.redis_client(), task_id):
        request = Context({**headers, **(embed if isinstance(embed, dict) else {}), "id": task_id})
        _app().backend.mark_as_revoked(task_id, "revoked before it started", request=request)
        logger.info("Dropped task %s[%s]: revoked before it started", task, task_id)
        raise Rejection(REVOKED, "revoked before it started", task, task_id)
    headers[revocation.CHECKED_HEADER] = time.monotonic()


def builtins_in_use(app: Any) -> frozenset[str]:
    """Celery's built-in tasks this platform's own machinery sends: with a Redis result
    backend (native chord join, results that expire by themselves), none."""
    used = set()
    if not app.backend.supports_native_join:
        used.add("celery.chord_unlock")
    if not app.backend.supports_autoexpire:
        used.add("celery.backend_cleanup")
    return frozenset(used)


def _check_headers(headers: dict[str, Any], reject: Any) -> None:
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(v is None or (_number(v) and 0 < v < math.inf) for v in limits)
    ):
        raise reject(MALFORMED, "header 'timelimit' must be [hard, soft] positive seconds or null")
    for name in ("eta", "expires"):
        value = headers.get(name)
        if value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and name == "expires"
        ):
            continue
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise reject(MALFORMED, f"header {name!r} is not an ISO 8601 time") from None
    retries = headers.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise reject(MALFORMED, "header 'retries' must be a non-negative integer")
    for name in ("root_id", "parent_id", "group", "shadow"):
        if headers.get(name) is not None and not isinstance(headers[name], str):
            raise reject(MALFORMED, f"header {name!r} must be a string")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bound_time_limits(headers: dict[str, Any], task: Any) -> None:
    """A message may shorten its task's configured time limits, never lengthen or lift them."""
    limits = headers.get("timelimit")
    if not limits:
        return
    bounded = []
    for sent, configured in zip(limits, (task.time_limit, task.soft_time_limit), strict=True):
        if configured is None:
            bounded.append(sent)
        else:
            bounded.append(configured if sent is None else min(sent, configured))
    headers["timelimit"] = bounded


def _already_seen(payload: dict[str, Any], headers: dict[str, Any], task_id: str) -> bool:
    """An outbox message is the first of its (task id, retry) unless another copy claimed it.

    The relay republishes a row whose deletion it could not record; the copy that claims the
    key runs, any other copy is dropped. A redelivery of the same copy (same delivery tag,
    after a crash) keeps its claim and runs.
    """
    app = _app()
    tag: str = payload["properties"]["delivery_tag"]
    key = f"{_SEEN_PREFIX}{task_id}:{headers.get('retries', 0)}"
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        if client.set(key, tag, nx=True, ex=_SEEN_TTL):
            # A first copy that already succeeded (sent before the outbox kept this one).
            return bool(app.backend.get_state(task_id) == states.SUCCESS)
        return bytes(client.get(key) or b"").decode() != tag


def settle(rejection: Rejection) -> None:
    """Store FAILURE for a dead-lettered task, so a caller's `.get()` raises instead of waiting."""
    if rejection.reason == DUPLICATE or not rejection.task_id:
        return
    _app().backend.store_result(rejection.task_id, DeadLetteredError(str(rejection)), states.FAILURE)

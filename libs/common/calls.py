"""Sending tasks by name: checked against their contract, routed by the one table, never lost.

This is how a producer (the web side, beat, or another service) calls a service it
must not import. A call that names no known task, whose arguments do not fit the
declaration, or whose arguments are larger than TASK_MAX_PAYLOAD_BYTES as JSON raises
before anything is published or stored.

Delivery goes through the transactional outbox (`common.outbox`):
- inside a Django transaction the task is written to the outbox table in that same
  transaction and published once it commits; a rollback sends nothing;
- outside one it is published at once; if the broker is unreachable it is kept in the
  outbox instead (a WARNING says so) and `relay_outbox` publishes it when Redis is back.
Either way the caller gets the AsyncResult, with its task id, at once. `outbox=False`
publishes at once even inside a transaction and raises `BrokerUnavailableError` (naming
the URL, password hidden) when the broker is unreachable, keeping nothing.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from celery import Celery, Signature
from celery.result import AsyncResult
from kombu.utils.json import dumps as kombu_dumps

from common import publishing
from common.celery_base import current_app
from common.publishing import (
    BATCH_SIZE,
    BROKER_ERRORS,
    Batch,
    BrokerUnavailableError,
    InvalidTaskOptionsError,
    _broker_down_since,
    _broker_down_until,  # noqa: F401 - cleared through here by test helpers
    broker_marked_down,
    broker_unavailable,
    one_round_trip,
    publish,
)
from common.settings import get_settings
from contracts.declare import InvalidTaskArgumentsError, TaskContract, bind_sender, lookup

# Publishing itself (and what it raises) is `common.publishing`, below the outbox; its names
# stay importable from here, the front door, where producers have always found them.
__all__ = [
    "BATCH_SIZE",
    "BROKER_ERRORS",
    "Batch",
    "BrokerUnavailableError",
    "InvalidTaskOptionsError",
    "PayloadTooLargeError",
    "apply_async",
    "broker_marked_down",
    "broker_unavailable",
    "contract",
    "delay",
    "encoded_payload",
    "one_round_trip",
    "publish",
    "send_many",
    "signature",
]

logger = logging.getLogger(__name__)


class PayloadTooLargeError(InvalidTaskArgumentsError):
    """Arguments larger than TASK_MAX_PAYLOAD_BYTES as JSON; nothing was sent or kept."""


def contract(name: str | TaskContract) -> TaskContract:
    return name if isinstance(name, TaskContract) else lookup(name)


def apply_async(
    name: str | TaskContract,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    app: Celery | None = None,
    outbox: bool = True,
    **options: Any,
) -> AsyncResult:
    """`Task.apply_async` for a task this process does not import (see the module docstring)."""
    c = contract(name)
    args = list(args)
    kwargs = dict(kwargs or {})
    c.check(tuple(args), kwargs)
    payload = encoded_payload(c, args, kwargs)
    app = app or current_app()
    if not outbox:
        return publish(app, c.name, args, kwargs, **options)

    from django.apps import apps
    from django.db import DatabaseError, transaction

    if not apps.ready:
        raise RuntimeError(
            "common.calls keeps tasks in the outbox, a Django model: set Django up first "
            "(common.celery_app.create_app does), or pass outbox=False"
        )
    from common.outbox import store

    caller_id = options.pop("task_id", None)
    task_id = caller_id or str(uuid.uuid4())
    queue, kept_options = store.encode_options(options, default_queue=c.queue) if options else (c.queue, {})
    row = store.Row(task_id, c.name, queue, payload, kept_options, caller_id is not None)
    if transaction.get_connection().in_atomic_block:
        if store.keep(row):
            store.publish_after_commit(app, task_id)
        return app.AsyncResult(task_id)

    down = _broker_down_since(app)
    if down is None:
        try:
            return publish(app, c.name, args, kwargs, task_id=task_id, **options)
        except BrokerUnavailableError as exc:
            reason = exc.reason
            unavailable: BrokerUnavailableError = exc
    else:
        reason = f"{down} (a publish failed under {publishing.BROKER_RETRY_AFTER:g} s ago)"
        unavailable = BrokerUnavailableError(f"Could not publish {c.name}: {reason}.", reason)
    try:
        store.keep(row)
    except DatabaseError as exc:
        raise BrokerUnavailableError(
            f"Could not publish {c.name}: {reason}, and could not keep it in the outbox either "
            f"({type(exc).__name__}). The task was not sent.",
            reason,
        ) from unavailable
    logger.warning(
        "%s[%s] kept in the outbox: %s. The outbox relay (relay_outbox) publishes it when the "
        "broker is back.",
        c.name,
        task_id,
        reason,
    )
    return app.AsyncResult(task_id)


def send_many(
    name: str | TaskContract,
    calls: Iterable[Sequence[Any]],
    *,
    app: Celery | None = None,
    **options: Any,
) -> list[AsyncResult]:
    """Send one task many times (a fan-out), each call's positional arguments in `calls`.

    Every call is checked first, and none is sent unless all fit. Then, as `apply_async`:
    inside a transaction they are kept in the outbox in a few bulk INSERTs and published
    once it commits; outside one they are published at once. Either way in pipelined
    batches of 500 (`Batch`): a fan-out of 1,000 costs a handful of round trips instead of
    1,000. If the broker is unreachable, what was not sent is kept in the outbox for the
    relay; every message carries the `x_outbox` header, so the workers drop a second copy.
    """
    c = contract(name)
    arg_lists, payloads = [], []
    for args in calls:
        args = list(args)
        c.check(tuple(args), {})
        payloads.append(encoded_payload(c, args, {}))
        arg_lists.append(args)
    if not payloads:
        return []
    app = app or current_app()

    from common.outbox import store

    if options.pop("task_id", None) is not None:
        raise InvalidTaskOptionsError("send_many gives each call its own task id; do not pass task_id")
    queue, kept_options = store.encode_options(options, default_queue=c.queue) if options else (c.queue, {})
    rows = [store.Row(str(uuid.uuid4()), c.name, queue, p, kept_options, False) for p in payloads]
    results = [app.AsyncResult(r.task_id) for r in rows]
    publish_options = store.decode_options(kept_options)
    arguments = {row.task_id: args for row, args in zip(rows, arg_lists, strict=True)}

    def send(batch: Batch, row: Any) -> None:
        batch.send(c.name, arguments[row.task_id], {}, task_id=row.task_id, queue=queue, **publish_options)

    send_or_keep(app, rows, send, c.name)
    return results


def send_or_keep(app: Celery, rows: list[Any], send: Callable[[Batch, Any], None], what: str) -> None:
    """Publish outbox rows (`store.Row`) as sending does: after the commit inside a transaction,
    else now, a round trip per chunk; what the broker does not take is kept in the outbox in one
    transaction, or `BrokerUnavailableError` says none of it was sent. `send_many` and canvas
    (`common.canvas`) both send this way; `send(batch, row)` adds one row's message."""
    from django.db import DatabaseError, transaction

    from common.outbox import store

    if transaction.get_connection().in_atomic_block:
        store.keep_many(rows)
        store.publish_after_commit_many(app, [r.task_id for r in rows])
        return
    sent, reason = 0, _broker_down_since(app)
    if reason is None:
        try:
            while sent < len(rows):
                chunk = rows[sent : sent + BATCH_SIZE]
                with Batch(app) as batch:
                    for row in chunk:
                        send(batch, row)
                sent += len(chunk)
            return
        except BrokerUnavailableError as exc:
            reason = exc.reason
        except BROKER_ERRORS as exc:  # the pipeline itself failed
            reason = broker_unavailable(app, exc, what).reason
    try:
        with transaction.atomic():
            store.keep_many(rows[sent:])
    except DatabaseError as exc:
        raise BrokerUnavailableError(
            f"Could not publish {len(rows) - sent} of {len(rows)} message(s) of {what}: {reason}, and "
            f"could not keep them in the outbox either ({type(exc).__name__}). They were not sent.",
            reason,
        ) from exc
    logger.warning(
        "%d message(s) of %s (%s) kept in the outbox: %s. The outbox relay (relay_outbox) publishes "
        "them when the broker is back.",
        len(rows) - sent,
        what,
        ", ".join(sorted({r.name for r in rows[sent:]})),
        reason,
    )


def delay(name: str | TaskContract, *args: Any, **kwargs: Any) -> AsyncResult:
    return apply_async(name, args, kwargs)


def encoded_payload(c: TaskContract, args: list[Any], kwargs: dict[str, Any]) -> str:
    """`[args, kwargs]` as the message body will carry them; refuse what is too large to send."""
    try:
        payload = kombu_dumps([args, kwargs])
    except (TypeError, ValueError) as exc:
        raise InvalidTaskArgumentsError(
            f"{c.name}{c.signature}: the arguments cannot be sent as JSON ({exc}). "
            "Pass ids and plain values. Nothing was sent."
        ) from None
    size = len(payload.encode())
    limit = get_settings().task_max_payload_bytes
    if size > limit:
        raise PayloadTooLargeError(
            f"{c.name}: the arguments are {size:,} bytes as JSON, over the limit of {limit:,} "
            "(TASK_MAX_PAYLOAD_BYTES). Pass ids (a row's primary key, a file's path) and let the "
            "task load the data. Nothing was sent."
        )
    return payload


def signature(
    name: str | TaskContract,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: Celery | None = None,
    **options: Any,
) -> Signature:
    """A canvas signature (for chain/group/chord) of a declared task.

    A mutable signature may leave its first parameter open: in a chain, Celery
    passes the previous step's result there.
    """
    c = contract(name)
    args = tuple(args)
    try:
        c.check(args, kwargs)
    except InvalidTaskArgumentsError:
        if immutable or not c.parameters:
            raise
        _check_with_parent_result(c, args, kwargs)
    app = app or current_app()
    return app.signature(c.name, args=args, kwargs=kwargs or {}, immutable=immutable, **options)


def _check_with_parent_result(c: TaskContract, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
    first = c.parameters[0]
    if kwargs and first in kwargs:
        raise InvalidTaskArgumentsError(
            f"{c.name}{c.signature}: {first!r} is filled by the previous step; do not pass it"
        )
    try:
        bound = c.signature.bind(None, *args, **(kwargs or {}))
    except TypeError as exc:
        raise InvalidTaskArgumentsError(f"{c.name}{c.signature}: {exc}") from None
    rest = dict(bound.arguments)
    rest.pop(first)
    c.check((), rest, partial=True)


# `contract.delay(...)` and friends come here (contracts import nothing of ours).
bind_sender(sys.modules[__name__])

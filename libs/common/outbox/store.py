"""Writing tasks to the outbox, and publishing a transaction's tasks once it commits.

Called by `common.calls` only. A row is written on the caller's database connection, so
inside `transaction.atomic()` it commits or rolls back with the caller's own rows.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from celery import Celery
from django.db import IntegrityError, transaction

from common.outbox.models import OutboxMessage

logger = logging.getLogger(__name__)

# How a message is sent, not what it is: never stored, the relay sends with its own.
TRANSPORT_ONLY = frozenset(
    {"producer", "connection", "publisher", "router", "result_cls", "add_to_parent", "retry", "retry_policy"}
)
OUTBOX_HEADER = "x_outbox"


class Row(NamedTuple):
    task_id: str
    name: str
    queue: str
    payload: str  # kombu's JSON of [args, kwargs]
    options: dict[str, Any]
    caller_id: bool  # the caller chose the task id, so it may already be kept


def encode_options(options: dict[str, Any], *, default_queue: str) -> tuple[str, dict[str, Any]]:
    """The queue and the JSON-safe options to keep; relative times become absolute.

    A countdown or an `expires` in seconds counts from the send, not from a publish by the
    relay minutes later. Raise `InvalidTaskOptionsError` for an option JSON cannot hold.
    """
    from common.calls import InvalidTaskOptionsError

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
    from common.calls import InvalidTaskOptionsError

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


def keep(row: Row) -> bool:
    """Write the task to the outbox in the current transaction; False if its id is already kept."""
    message = _message(row)
    if not row.caller_id:
        message.save(force_insert=True)  # a fresh uuid4: no conflict to expect
        return True
    try:
        with transaction.atomic():  # a savepoint: a duplicate must not break the caller's transaction
            message.save(force_insert=True)
    except IntegrityError:
        logger.info("%s[%s] is already in the outbox; kept once", row.name, row.task_id)
        return False
    return True


def keep_many(rows: list[Row]) -> None:
    """Write fresh-id rows to the outbox in the current transaction, in few INSERTs."""
    OutboxMessage.objects.bulk_create([_message(row) for row in rows], batch_size=500)


def _message(row: Row) -> OutboxMessage:
    args, kwargs = json.loads(row.payload)
    return OutboxMessage(
        task_id=row.task_id,
        task_name=row.name,
        queue=row.queue,
        args=args,
        kwargs=kwargs,
        options=row.options,
    )


def publish_after_commit(app: Celery, task_id: str) -> None:
    """Publish the task once the caller's transaction commits; a rollback drops it.

    Every send registers a hook, and the first hook to run publishes all of the
    transaction's tasks in one batch (the others find nothing left). Ids from a rolled-back
    savepoint are in the batch too, but their rows are gone, so nothing is published for them.
    """
    publish_after_commit_many(app, [task_id])


def publish_after_commit_many(app: Celery, task_ids: list[str]) -> None:
    """`publish_after_commit` for many tasks: one hook, one batch."""
    conn = transaction.get_connection()
    pending: dict[str, Celery] | None = getattr(conn, "outbox_pending", None)
    if pending is None or not conn.run_on_commit:
        pending = conn.outbox_pending = {}  # no hook left from before: those ids were rolled back
    for task_id in task_ids:
        pending[task_id] = app
    transaction.on_commit(lambda: _flush(conn))


def _flush(conn: Any) -> None:
    pending: dict[str, Celery] = getattr(conn, "outbox_pending", None) or {}
    if not pending:
        return
    conn.outbox_pending = {}
    by_app: dict[Celery, list[str]] = {}
    for task_id, app in pending.items():
        by_app.setdefault(app, []).append(task_id)
    from common.outbox.relay import publish_kept

    for app, task_ids in by_app.items():
        try:
            publish_kept(app, task_ids)
        except Exception:  # the commit happened: never fail the caller; the relay retries
            logger.exception("Publishing %d committed task(s) failed; they stay in the outbox", len(task_ids))

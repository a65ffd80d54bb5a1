"""Writing tasks to the outbox, and publishing a transaction's tasks once it commits.

Called by `common.calls` only. A row is written on the caller's database connection, so
inside `transaction.atomic()` it commits or rolls back with the caller's own rows.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

from celery import Celery
from django.db import IntegrityError, transaction

from common.outbox.models import OutboxMessage
from common.outbox.options import OUTBOX_HEADER, decode_options, encode_options
from common.outbox.relay import publish_kept

logger = logging.getLogger(__name__)

__all__ = [
    "OUTBOX_HEADER",
    "Row",
    "decode_options",
    "encode_options",
    "keep",
    "keep_many",
    "publish_after_commit",
    "publish_after_commit_many",
]


class Row(NamedTuple):
    task_id: str
    name: str
    queue: str
    payload: str  # kombu's JSON of [args, kwargs]
    options: dict[str, Any]
    caller_id: bool  # the caller chose the task id, so it may already be kept


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
    for app, task_ids in by_app.items():
        try:
            publish_kept(app, task_ids)
        except Exception:  # the commit happened: never fail the caller; the relay retries
            logger.exception("Publishing %d committed task(s) failed; they stay in the outbox", len(task_ids))

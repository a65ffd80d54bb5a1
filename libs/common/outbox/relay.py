"""Publishing what the outbox holds: right after a commit, and by the relay loop.

Rows are claimed with `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so several relays
(and the post-commit publish) never publish the same row at once; SQLite has no row locks,
and there a row may be published twice. A row is deleted only after its publish, so a
relay that dies in between publishes it again: the same task id, with the `x_outbox`
header, which the workers deduplicate.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

from celery import Celery
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import F, QuerySet

from common import publishing
from common.celery_base import current_app
from common.masking import mask_text
from common.outbox import captured
from common.outbox.models import OutboxMessage
from common.outbox.options import decode_options

logger = logging.getLogger(__name__)

BATCH_SIZE = 100
_IN_CHUNK = 500  # task ids per `IN (...)`: well under SQLite's variable limit


@dataclass
class Pass:
    """What one pass did: rows published, and whether it stopped because the broker is down."""

    published: int = 0
    failed: int = 0
    broker_down: str | None = None


def publish_kept(app: Celery, task_ids: Iterable[str]) -> Pass:
    """Publish these kept tasks (if still there and not claimed by a relay) and delete them."""
    done = Pass()
    ids = list(task_ids)
    if publishing.broker_marked_down(app):  # a publish just failed: do not wait for another timeout
        done.broker_down = "the broker was unreachable moments ago"
        _warn_kept(len(ids), done.broker_down)
        return done
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        with _claiming():
            rows = list(_claim(OutboxMessage.objects.filter(task_id__in=chunk).order_by("pk")))
            _publish(app, rows, done)
        if done.broker_down:
            _warn_kept(OutboxMessage.objects.filter(task_id__in=chunk).count(), done.broker_down)
            break
    return done


def _warn_kept(count: int, reason: str) -> None:
    logger.warning(
        "%d committed task(s) kept in the outbox: %s. The outbox relay (relay_outbox) publishes "
        "them when the broker is back.",
        count,
        reason,
    )


def relay_once(
    app: Celery | None = None, *, batch_size: int = BATCH_SIZE, stop: threading.Event | None = None
) -> Pass:
    """One pass over the outbox, oldest first, in batches; stops early if the broker is down.

    `stop` ends the pass between batches, so a relay told to stop does not drain a backlog first.
    """
    app = app or _app()
    done = Pass()
    after = 0
    while stop is None or not stop.is_set():
        with _claiming():
            rows = list(_claim(OutboxMessage.objects.filter(pk__gt=after).order_by("pk"))[:batch_size])
            if not rows:
                return done
            _publish(app, rows, done)
        if done.broker_down:
            return done
        after = rows[-1].pk
    return done


def run(
    app: Celery | None = None,
    *,
    interval: float = 1.0,
    batch_size: int = BATCH_SIZE,
    stop: threading.Event | None = None,
) -> None:
    """The relay loop: a pass every `interval` seconds until `stop` is set (TERM and INT set it).

    Survives the broker and the database going away: it logs once per outage and goes on.
    """
    stop = stop or _stop_on_signals()
    app = app or _app()
    outage: tuple[str, str] | None = None  # (what is failing, the first error seen)
    logger.info("Outbox relay started: a pass every %g s, batches of %d", interval, batch_size)
    while not stop.is_set():
        close_old_connections()  # drop a connection the database closed; CONN_MAX_AGE applies
        problem: tuple[str, str] | None = None
        try:
            done = relay_once(app, batch_size=batch_size, stop=stop)
            if done.broker_down:
                problem = ("broker", done.broker_down)
        except DatabaseError as exc:
            done = Pass()
            problem = ("database", f"database error ({type(exc).__name__}: {mask_text(str(exc))[:200]})")
        except Exception as exc:  # a bug or an unexpected broker error: keep the relay alive
            done = Pass()
            problem = (type(exc).__name__, f"{type(exc).__name__}: {mask_text(str(exc))[:200]}")
            if outage is None or outage[0] != problem[0]:
                logger.exception("Outbox relay pass failed")
        if problem:
            if outage is None or outage[0] != problem[0]:  # once per outage, not once per pass
                logger.warning("Outbox relay cannot publish: %s; retrying every %g s", problem[1], interval)
            outage = outage if outage and outage[0] == problem[0] else problem
        elif done.published and outage:
            logger.warning("Outbox relay publishes again after: %s", outage[1])
            outage = None
        if done.published:
            logger.info("Outbox relay published %d task(s)", done.published)
        stop.wait(interval)
    logger.info("Outbox relay stopped")


def _publish(app: Celery, rows: list[OutboxMessage], done: Pass) -> None:
    """Publish the rows in order in one round trip, then delete them; stop at a broker outage.

    All or none of the batch counts as published: when the pipeline fails, some messages may
    have reached Redis, and their rows stay to be published again; each copy carries the
    `x_outbox` header, and the workers run only one copy of a task id.
    """
    published: list[int] = []
    try:
        with publishing.Batch(app) as batch:
            for row in rows:
                try:
                    if captured.is_captured(row.options):  # a canvas's message, built at the send
                        captured.replay(app, batch, row.task_name, row.options)
                    else:
                        batch.send(
                            row.task_name,
                            row.args,
                            row.kwargs,
                            task_id=row.task_id,
                            queue=row.queue,
                            **decode_options(row.options),
                        )
                except publishing.BrokerUnavailableError:
                    raise
                except Exception as exc:  # this row cannot be published: record why, go on with the rest
                    error = mask_text(f"{type(exc).__name__}: {exc}")
                    if not row.attempts:
                        logger.error("Outbox cannot publish %s[%s]: %s", row.task_name, row.task_id, error)
                    done.failed += 1
                    _failed(row, error)
                    continue
                published.append(row.pk)
    except publishing.BrokerUnavailableError as exc:
        _broker_down(rows, exc.reason, done)
        return
    except publishing.BROKER_ERRORS as exc:  # the pipeline itself failed
        reason = publishing.broker_unavailable(app, exc).reason
        _broker_down(rows, reason, done)
        return
    if published:
        OutboxMessage.objects.filter(pk__in=published).delete()
        done.published += len(published)


def _broker_down(rows: list[OutboxMessage], reason: str, done: Pass) -> None:
    done.broker_down = reason
    OutboxMessage.objects.filter(pk__in=[r.pk for r in rows]).update(
        attempts=F("attempts") + 1, last_error=reason[:2000]
    )


def _failed(row: OutboxMessage, error: str) -> None:
    OutboxMessage.objects.filter(pk=row.pk).update(attempts=F("attempts") + 1, last_error=error[:2000])


def _claiming() -> transaction.Atomic | nullcontext[None]:
    # Row locks last as long as the transaction. SQLite has none, and a read that turns into
    # a write inside a transaction fails at once when another process writes: autocommit there.
    if connection.features.has_select_for_update_skip_locked:
        return transaction.atomic()
    return nullcontext()


def _claim(rows: QuerySet[OutboxMessage]) -> QuerySet[OutboxMessage]:
    if connection.features.has_select_for_update_skip_locked:
        return rows.select_for_update(skip_locked=True)
    return rows


def _app() -> Celery:
    return current_app()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    return stop

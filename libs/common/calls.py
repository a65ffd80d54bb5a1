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
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from celery import Celery, Signature
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from kombu.utils.json import dumps as kombu_dumps
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.celery_app import current_app
from common.masking import mask_text, redact_url
from common.settings import get_settings
from contracts.declare import InvalidTaskArgumentsError, TaskContract, bind_sender, lookup

logger = logging.getLogger(__name__)

# After a failed publish, sends to that broker go straight to the outbox for this many
# seconds instead of each waiting out the publish retry policy: a fan-out of 1,000 tasks
# during an outage then takes 1,000 inserts, not 1,000 timeouts. The relay keeps probing.
BROKER_RETRY_AFTER = 5.0
_broker_down_until: dict[str, float] = {}


class BrokerUnavailableError(ConnectionError):
    """The broker could not be reached; the task was not published."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class PayloadTooLargeError(InvalidTaskArgumentsError):
    """Arguments larger than TASK_MAX_PAYLOAD_BYTES as JSON; nothing was sent or kept."""


class InvalidTaskOptionsError(TypeError):
    """A publish option the outbox cannot keep as JSON; nothing was sent or kept."""


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
        reason = f"{down} (a publish failed under {BROKER_RETRY_AFTER:g} s ago)"
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
    from django.db import DatabaseError, transaction

    from common.outbox import store

    if options.pop("task_id", None) is not None:
        raise InvalidTaskOptionsError("send_many gives each call its own task id; do not pass task_id")
    queue, kept_options = store.encode_options(options, default_queue=c.queue) if options else (c.queue, {})
    rows = [store.Row(str(uuid.uuid4()), c.name, queue, p, kept_options, False) for p in payloads]
    results = [app.AsyncResult(r.task_id) for r in rows]
    if transaction.get_connection().in_atomic_block:
        store.keep_many(rows)
        store.publish_after_commit_many(app, [r.task_id for r in rows])
        return results

    sent, reason = 0, _broker_down_since(app)
    if reason is None:
        publish_options = store.decode_options(kept_options)
        try:
            while sent < len(rows):
                chunk = range(sent, min(sent + BATCH_SIZE, len(rows)))
                with Batch(app) as batch:
                    for i in chunk:
                        row = rows[i]
                        batch.send(
                            c.name, arg_lists[i], {}, task_id=row.task_id, queue=queue, **publish_options
                        )
                sent = chunk.stop
            return results
        except BrokerUnavailableError as exc:
            reason = exc.reason
        except BROKER_ERRORS as exc:  # the pipeline itself failed
            reason = broker_unavailable(app, exc, c.name).reason
    try:
        with transaction.atomic():
            store.keep_many(rows[sent:])
    except DatabaseError as exc:
        raise BrokerUnavailableError(
            f"Could not publish {len(rows) - sent} of {len(rows)} {c.name} task(s): {reason}, and could "
            f"not keep them in the outbox either ({type(exc).__name__}). They were not sent.",
            reason,
        ) from exc
    logger.warning(
        "%d %s task(s) kept in the outbox: %s. The outbox relay (relay_outbox) publishes them when "
        "the broker is back.",
        len(rows) - sent,
        c.name,
        reason,
    )
    return results


def delay(name: str | TaskContract, *args: Any, **kwargs: Any) -> AsyncResult:
    return apply_async(name, args, kwargs)


# What a publish raises when Redis is unreachable or does not answer.
BROKER_ERRORS = (OperationalError, RedisConnectionError, RedisTimeoutError, RuntimeError, TimeoutError)
BATCH_SIZE = 500  # messages per pipelined round trip


class Batch:
    """Publish many messages in one round trip: `with Batch(app) as batch: batch.send(...)`.

    The messages go out in one pipeline when the block ends (our transport's
    `publishing_in_one_round_trip`); nothing is sent if the block raises, and a broker
    error raises at its end, when some messages may have reached Redis (send the batch
    again with the `x_outbox` header: the workers drop second copies). Whatever else this
    thread publishes in the block joins the round trip (`one_round_trip`).

    Celery's `send_task` declares the queue and wraps every message in kombu's retry loop;
    inside one pipeline neither can do anything but cost (a third of a fan-out's time),
    so each queue is declared once per batch and the retry is the caller's.
    """

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or current_app()
        self._declared: set[Any] = set()

    def __enter__(self) -> Batch:
        self._producing = self.app.producer_or_acquire()
        self.producer = self._producing.__enter__()
        batched = getattr(self.producer.channel, "publishing_in_one_round_trip", None)
        self._pipeline = batched() if batched is not None else nullcontext()
        try:
            self._pipeline.__enter__()
        except BaseException:
            self._producing.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._pipeline.__exit__(*exc_info)
        finally:
            self._producing.__exit__(*sys.exc_info())

    def send(self, name: str, args: list[Any], kwargs: dict[str, Any], **options: Any) -> AsyncResult:
        """`publish` into this batch (unchecked: callers check the contract first)."""
        queue = options.get("queue")
        if queue in self._declared:
            options["declare"] = []
        self._declared.add(queue)
        return publish(self.app, name, args, kwargs, producer=self.producer, retry=False, **options)


@contextmanager
def one_round_trip(app: Celery | None = None) -> Iterator[None]:
    """Everything this thread publishes in the block goes out in one round trip at its end:
    Celery's canvas too (`chord(header, body).apply_async()` sends its whole header at once).
    Do not wait for a result inside the block: nothing has left yet."""
    with Batch(app):
        yield


def publish(app: Celery, name: str, args: list[Any], kwargs: dict[str, Any], **options: Any) -> AsyncResult:
    """Publish now, unchecked (callers check first); raise `BrokerUnavailableError` on an outage.

    The outbox relay publishes through here too, so an outage looks the same everywhere.
    """
    try:
        result = app.send_task(name, args=args, kwargs=kwargs, **options)
    except BROKER_ERRORS as exc:
        raise broker_unavailable(app, exc, name) from exc
    if _broker_down_until:
        _broker_down_until.pop(app.conf.broker_url, None)
    return result


def broker_unavailable(app: Celery, exc: BaseException, what: str = "the tasks") -> BrokerUnavailableError:
    """The outage `exc` as a `BrokerUnavailableError`; sends skip the broker for a few seconds.

    Re-raises `exc` if it is no outage (a RuntimeError other than the result store's).
    """
    if isinstance(exc, RuntimeError) and "result store" not in str(exc):
        raise exc  # only the Redis result backend's "cannot reconnect" is a broker outage
    reason = f"broker at {redact_url(app.conf.broker_url)} is unreachable ({_root_cause(exc)})"
    _broker_down_until[app.conf.broker_url] = time.monotonic() + BROKER_RETRY_AFTER
    return BrokerUnavailableError(
        f"Could not publish {what}: {reason}. Is Redis running and REDIS_URL right? The task was not sent.",
        reason,
    )


def _root_cause(exc: BaseException) -> str:
    """The innermost error's type and text (say, "certificate verify failed"), masked, short."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = mask_text(str(exc))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def broker_marked_down(app: Celery) -> bool:
    """True while a recent publish to this app's broker failed (sends go to the outbox)."""
    return _broker_down_since(app) is not None


def _broker_down_since(app: Celery) -> str | None:
    if not _broker_down_until:
        return None
    url = app.conf.broker_url
    until = _broker_down_until.get(url)
    if until is None or time.monotonic() >= until:
        _broker_down_until.pop(url, None)
        return None
    return f"broker at {redact_url(url)} is unreachable"


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
bind_sender(sys.modules[__name__])  # type: ignore[arg-type]

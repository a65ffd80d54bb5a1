"""Publishing now, to the broker: the layer under sending that the outbox relay uses too.

`common.calls` (the front door: contract check, payload limit, the outbox) and the outbox
relay (`common.outbox.relay`) both publish through `publish` and `Batch`, so an outage looks
the same everywhere: a `BrokerUnavailableError` naming the broker (password hidden), after
which sends to that broker skip it for `BROKER_RETRY_AFTER` seconds and go to the outbox.
Nothing here checks a contract: callers check first. A unique task's duplicate (its key held,
`common.transport.broker.uniqueness`) publishes nothing, and `publish` returns the
`AsyncResult` of the task that holds the key.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.celery_base import current_app
from common.masking import mask_text, redact_url
from common.transport.broker import uniqueness

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


class InvalidTaskOptionsError(TypeError):
    """A publish option the outbox cannot keep as JSON; nothing was sent or kept."""


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

    def send_message(self, name: str, message: Any, **options: Any) -> None:
        """Publish a message already built (`app.amqp.create_task_message`'s) into this batch.

        What the outbox keeps of a canvas: its task ids, headers and body were fixed when it was
        sent, so it is published as it is, through Celery's own `send_task_message` (its
        signals included), not built again.
        """
        queue = options.get("queue")
        if queue in self._declared:
            options["declare"] = []
        self._declared.add(queue)
        try:
            self.app.amqp.send_task_message(self.producer, name, message, retry=False, **options)
        except BROKER_ERRORS as exc:
            raise broker_unavailable(self.app, exc, name) from exc


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
    holder = uniqueness.duplicate_of(result.id)
    if holder is not None:  # a unique task already queued: the caller follows that one
        return app.AsyncResult(holder)
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

"""Canvas (chain, group, chord) sent through the outbox: after the commit, all of it or none.

Celery's canvas publishes its messages itself, one `send_task` each, and sets a chord up in
the result backend (its size, `set_chord_size`; a nested header's group, `apply_chord`)
before publishing the header. So a workflow sent inside a transaction that rolls back still
ran, and one sent while Redis was away was lost in part. Here `apply_async` of every canvas
shape (and of a plain signature) runs Celery's own code with the messages captured instead
of published: each one as Celery built it (its final task id, headers and body), with the
backend setup it needs run just before it. Then, checked against the contracts:

- inside `transaction.atomic()` they are kept in the outbox in that transaction and
  published, in order, after the commit; a rollback keeps and sends nothing;
- outside one they are published at once in one round trip (`publishing.Batch`); if Redis is
  unreachable, all that did not go out is kept in the outbox (one transaction) for the relay.

The relay publishes a kept message unchanged (`common.outbox.captured.replay`), its chord
setup first. Every message carries the `x_outbox` header, so a second copy is dropped. What
a worker publishes while it runs a task (a chain's next step, a chord's callback) is not
captured unless that task is inside a transaction: it is Celery's, as before.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from celery import Celery, chord, group
from celery._state import get_current_worker_task
from celery.canvas import Signature, _chain
from celery.result import GroupResult

from common import calls
from common.celery_base import current_app
from common.outbox import captured
from common.publishing import BROKER_ERRORS
from contracts.declare import lookup, service_contracts

logger = logging.getLogger(__name__)

CANVAS_CLASSES = (Signature, _chain, group, chord)  # `chord` is the class itself
_MARK = "_through_the_outbox"
_state = threading.local()


@dataclass
class Capture:
    """What one canvas `apply_async` would have published, in order."""

    # (task name, Celery's message, send_task_message's options, backend setup before it)
    messages: list[tuple[str, Any, dict[str, Any], list[list[Any]]]] = field(default_factory=list)
    setup: list[list[Any]] = field(default_factory=list)  # waiting for the next message
    pending: list[tuple[Any, bool]] = field(default_factory=list)  # results a group waits on


def install(app: Celery) -> None:
    """Send every canvas through the outbox (idempotent; the classes are patched once)."""
    for cls in CANVAS_CLASSES:
        original = cls.__dict__["apply_async"]
        if not getattr(original, _MARK, False):
            cls.apply_async = _through_the_outbox(original)  # type: ignore[method-assign]


def _current() -> Capture | None:
    return getattr(_state, "capture", None)


def _through_the_outbox(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def apply_async(self: Signature, *args: Any, **kwargs: Any) -> Any:
        if _current() is not None or not _applies(self):  # a part of a canvas being captured
            return original(self, *args, **kwargs)
        app = self.app
        with _capturing(app) as capture:
            result = original(self, *args, **kwargs)
        _send(app, capture)
        _wait_for_results(app, capture)
        return result

    setattr(apply_async, _MARK, True)
    return apply_async


def _applies(sig: Signature) -> bool:
    """Captured unless Django is not set up, the app runs tasks eagerly, or a worker publishes
    a running task's continuation (a chain's next step, a chord's callback) outside a transaction."""
    from django.apps import apps
    from django.db import transaction

    if not apps.ready or sig.app.conf.task_always_eager or not _declared(sig):
        return False
    return get_current_worker_task() is None or transaction.get_connection().in_atomic_block


def _declared(sig: Any) -> bool:
    """Every task of the canvas belongs to a service whose contracts this deployable carries.

    A task of another (a test's probe service, Celery's built-ins) goes Celery's own way, as it
    did before canvas was kept: the outbox keeps only what it can check, and a worker's intake
    refuses a name it does not know. A name unknown to a known service (a typo) is captured, so
    the contract check refuses it before anything is sent.
    """
    if isinstance(sig, chord):
        parts: list[Any] = [*sig.tasks, sig.body]
    elif isinstance(sig, _chain | group):
        parts = list(sig.tasks)
    else:
        name = getattr(sig, "task", None)
        return isinstance(name, str) and service_contracts(name.partition(".")[0]) is not None
    return all(_declared(part) for part in parts if part is not None)


@contextmanager
def _capturing(app: Celery) -> Iterator[Capture]:
    capture = Capture()
    for each in {app, current_app()}:
        _capture_messages(each)
    real = app.backend
    local = cast(Any, app)._local  # the thread's cached backend, as `app.backend` reads it
    local.backend = _RecordingBackend(real)  # this thread's backend only
    _state.capture = capture
    try:
        yield capture
    finally:
        _state.capture = None
        local.backend = real


def _capture_messages(app: Celery) -> None:
    """Wrap the app's `send_task_message` (once): while capturing, record instead of publishing."""
    amqp = cast(Any, app.amqp)
    send = amqp.send_task_message
    if getattr(send, _MARK, False):
        return

    def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
        capture = _current()
        if capture is None:
            return send(producer, name, message, **options)
        capture.messages.append((name, message, options, capture.setup))
        capture.setup = []
        return None

    setattr(send_task_message, _MARK, True)
    amqp.send_task_message = send_task_message


class _RecordingBackend:
    """The app's result backend, with a chord's setup recorded while capturing, not run."""

    def __init__(self, real: Any) -> None:
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)

    def add_pending_result(self, result: Any, weak: bool = False, start_drainer: bool = True) -> Any:
        """A group's `then` subscribes to each member's result at the send (a GroupResult's
        `.get()` relies on it): while capturing, after the send (`_wait_for_results`)."""
        capture = _current()
        if capture is None:
            return self._real.add_pending_result(result, weak=weak, start_drainer=start_drainer)
        capture.pending.append((result, weak))
        return result

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        capture = _current()
        if capture is None:
            return self._real.set_chord_size(group_id, chord_size)
        capture.setup.append(["set_chord_size", [group_id, chord_size]])

    def apply_chord(self, header_result_args: Any, body: Any, **options: Any) -> None:
        capture = _current()
        if capture is None:
            return self._real.apply_chord(header_result_args, body, **options)
        group_id, results = header_result_args[0], list(header_result_args[1])
        header = GroupResult(group_id, results, app=self._real.app)
        capture.setup.append(["apply_chord", [header.as_tuple(), dict(body), options]])


def _wait_for_results(app: Celery, capture: Capture) -> None:
    """Register the results a group waits on, as Celery does at the send. With Redis away the
    subscription fails, but the result stays registered: the consumer subscribes on reconnect."""
    for result, weak in capture.pending:
        try:
            cast(Any, app.backend).add_pending_result(result, weak=weak)
        except (RuntimeError, *BROKER_ERRORS) as exc:
            logger.info("Waiting on %s from when Redis is back (%s)", result.id, type(exc).__name__)


def _send(app: Celery, capture: Capture) -> None:
    """Check every captured message, then keep them (in a transaction) or publish them now."""
    if capture.setup and capture.messages:  # setup with no message after it: run it before the last
        capture.messages[-1][3].extend(capture.setup)
    rows = [_row(name, message, options, setup) for name, message, options, setup in capture.messages]
    if not rows:
        return
    calls.send_or_keep(
        app, rows, lambda batch, row: captured.replay(app, batch, row.name, row.options), "a canvas"
    )


def _row(name: str, message: Any, options: dict[str, Any], setup: list[list[Any]]) -> Any:
    """One captured message as an outbox row (`store.Row`), checked against its contract first."""
    from common.outbox import store

    contract = lookup(name)
    args, kwargs = list(message.body[0]), dict(message.body[1])
    contract.check(tuple(args), kwargs)
    calls.encoded_payload(contract, args, kwargs)  # over TASK_MAX_PAYLOAD_BYTES: refused
    task_id, queue, payload, kept = captured.encode(name, message, options, setup)
    return store.Row(task_id, name, queue or contract.queue, payload, kept, False)

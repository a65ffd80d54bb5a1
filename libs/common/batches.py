"""Batches: tasks of any services, with callbacks when they have all ended (Sidekiq Pro's model).

```python
from common import batches
from contracts import sync

with batches.Batch(on_success=probe.s(), on_complete=report.s(), description="nightly CRM sync") as batch:
    batch.add_many(sync.sync_doctor_to_external_system, [(i,) for i in doctor_ids])
batches.status(batch.id)  # total, pending, succeeded, failed, failed_ids, ...
```

- `on_complete` runs once every member has ended (some may have failed for good), `on_success`
  once every member has succeeded, `on_death` when the first member is dead-lettered. Each is
  a signature of a task of any service, called with the batch's `BatchStatus` (ids and counts)
  as its first argument, so its contract's first parameter takes one
  (`contracts.declare.BatchStatus`).
- Members may be added while the batch is open (the `with` block) and, by a member itself,
  until the batch fires (`Batch.reopen(batch_id)`): a fan-out that discovers its work.
- A batch is a member of its `parent`, ending when its own callbacks fire.

Counting is idempotent by task id and atomic with each member's final result (and ack), and the
callbacks are published by the Redis step that counts the last member, so each is published
exactly once (`common.transport.batches`). Members are published at once (unlike canvas), not
through the outbox: a batch opened inside a transaction that rolls back keeps its members
sent. A block that raises leaves the batch open: it never fires, and expires after
`transport.batches.TTL`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

from celery import Celery, Signature
from django.core.exceptions import ImproperlyConfigured

from common import calls
from common.celery_base import current_app
from common.publishing import BATCH_SIZE
from common.publishing import Batch as Pipeline
from common.settings import get_settings
from common.transport import batches as store
from contracts.declare import BatchStatus, InvalidTaskArgumentsError, TaskContract, UnknownTaskError

_SAMPLE: BatchStatus = {"batch_id": "0" * 32, "total": 0, "succeeded": 0, "failed": 0, "failed_ids": []}


class BatchClosedError(RuntimeError):
    """The batch has fired (its callbacks went out) or expired: it takes no more members."""


class Batch:
    """A batch of tasks; `with Batch(...) as batch:` creates it and closes it at the end."""

    def __init__(
        self,
        *,
        on_success: Signature | None = None,
        on_complete: Signature | None = None,
        on_death: Signature | None = None,
        description: str = "",
        parent: Batch | str | None = None,
        app: Celery | None = None,
    ) -> None:
        self.app = app or current_app()
        self.id = store.new_id()
        self.description = description
        self.parent = parent.id if isinstance(parent, Batch) else store.valid_id(parent)
        if parent is not None and self.parent is None:
            raise ValueError(f"parent={parent!r} is not a batch")
        self.callbacks = {
            name: _encoded(sig, name)
            for name, sig in (
                ("on_complete", on_complete),
                ("on_success", on_success),
                ("on_death", on_death),
            )
            if sig is not None
        }
        self._created = False

    @classmethod
    def reopen(cls, batch_id: str, app: Celery | None = None) -> Batch:
        """The batch `batch_id`, to add members to until it fires (a member adding its own)."""
        batch = cls.__new__(cls)
        batch.app, batch.id, batch.description, batch.parent = app or current_app(), batch_id, "", None
        batch.callbacks, batch._created = {}, True
        return batch

    def __enter__(self) -> Batch:
        self.create()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()

    def create(self) -> None:
        """Store the batch (open) with its encoded callbacks; register it with its parent."""
        if self._created:
            return
        _refuse_separate_results()
        fields: dict[str, Any] = {
            "total": 0, "succeeded": 0, "failed": 0, "closed": 0, "fired": 0,
            "description": self.description, "created": time.time(), "parent": self.parent or "",
        }  # fmt: skip
        for name, (queue, head, tail, task_id) in self.callbacks.items():
            fields.update(
                {f"{name}.queue": queue, f"{name}.head": head, f"{name}.tail": tail, f"{name}.id": task_id}
            )
        client = self._client()
        pipe = client.pipeline(transaction=True)
        pipe.hset(store.key(self.id), mapping=fields).expire(store.key(self.id), store.TTL)
        pipe.execute()
        if self.parent is not None:
            _register(client, self.parent, [self.id])
        self._created = True

    def add(self, name: str | TaskContract, *args: Any) -> str:
        """Add one member, `name(*args)`; returns its task id."""
        return self.add_many(name, [args])[0]

    def add_many(self, name: str | TaskContract, calls_: Iterable[Sequence[Any]]) -> list[str]:
        """Add a member per call's positional arguments, checked against the contract first
        (none is sent unless all fit), registered, then published 500 per round trip."""
        self.create()
        c = calls.contract(name)
        arg_lists = []
        for args in calls_:
            args = list(args)
            c.check(tuple(args), {})
            calls.encoded_payload(c, args, {})
            arg_lists.append(args)
        client, ids = self._client(), []
        headers = {store.HEADER: self.id}
        for start in range(0, len(arg_lists), BATCH_SIZE):
            chunk = arg_lists[start : start + BATCH_SIZE]
            chunk_ids = [str(uuid.uuid4()) for _ in chunk]
            _register(client, self.id, chunk_ids)  # before they can run: none counts early
            with Pipeline(self.app) as pipeline:
                for args, task_id in zip(chunk, chunk_ids, strict=True):
                    pipeline.send(c.name, args, {}, task_id=task_id, queue=c.queue, headers=headers)
            ids += chunk_ids
        return ids

    def close(self) -> bool:
        """No more members from the producer; True if every member had already ended (fired)."""
        self.create()
        script = self._client().register_script(store.CLOSE)
        fired = int(script(keys=[store.key(self.id)], args=[self.id, store.BELL_PREFIX, store.TTL]))
        if fired < 0:
            raise BatchClosedError(f"batch {self.id} is gone (expired?)")
        return fired == 1

    def status(self) -> dict[str, Any]:
        return status(self.id, app=self.app)

    def _client(self) -> Any:
        return cast(Any, self.app.backend).client  # the Redis backend's (results on the broker)


def status(batch_id: str, *, app: Celery | None = None) -> dict[str, Any]:
    """A batch's state: total, pending, succeeded, failed, failed_ids (every one), closed,
    fired, dead, parent, description and its callbacks' task ids. `KeyError` if unknown."""
    found = store.read_status(cast(Any, (app or current_app()).backend).client, batch_id)
    if found is None:
        raise KeyError(f"no batch {batch_id!r} (never created, or expired)")
    return found


def _register(client: Any, batch_id: str, member_ids: list[str]) -> None:
    script = client.register_script(store.ADD)
    if int(script(keys=[store.key(batch_id)], args=[batch_id, *member_ids])) < 0:
        raise BatchClosedError(f"batch {batch_id} has fired or expired: it takes no more members")


def _encoded(sig: Signature, name: str) -> tuple[str, str, str, str]:
    """A callback as (queue, head, tail, task id), checked with a status as its first argument."""
    task, args, kwargs = str(sig.task), list(sig.args or ()), dict(sig.kwargs or {})
    try:
        c: TaskContract | None = calls.contract(task)
    except UnknownTaskError:
        c = None  # a task without a contract (a probe): Celery checks the call on the worker
    if c is not None:
        try:
            c.check((_SAMPLE, *args), kwargs)
        except InvalidTaskArgumentsError as exc:
            raise InvalidTaskArgumentsError(
                f"{name}={task}: a batch callback is called with the batch's status (a "
                f"contracts.declare.BatchStatus) as its first argument: {exc}"
            ) from None
    queue = sig.options.get("queue") or (c.queue if c is not None else None)
    if not queue:
        raise ValueError(f"{name}={task}: no queue (give the signature one, or declare a contract)")
    task_id = sig.options.get("task_id") or str(uuid.uuid4())
    head, tail = store.callback_message(task, queue, args, kwargs, task_id)
    return queue, head, tail, task_id


def _refuse_separate_results() -> None:
    s = get_settings()
    if s.results_url != s.redis_url:
        raise ImproperlyConfigured(
            "batches count their members on the broker's Redis, in the step that stores each "
            "result: leave RESULT_BACKEND_URL unset (results on REDIS_URL) to use them"
        )

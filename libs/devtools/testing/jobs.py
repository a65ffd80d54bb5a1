"""The fast tier's broker: every task published, recorded in-process, and run as a worker would.

Dramatiq's `StubBroker` + `Worker` + `broker.join()`, for this platform. Inside `Jobs()`
(the pytest fixture `jobs`, devtools.testing.fast) every Celery app of the process publishes
to a kombu transport of its own (`stub://`) instead of Redis, and keeps results in Celery's
in-memory result backend. Nothing of the sending side is replaced: `common.calls` checks the
contract, encodes the arguments as JSON, keeps a task sent inside a transaction in the outbox
and publishes it after the commit (a rollback sends nothing); kombu serialises the message and
hands it to the transport's `_put`, which is where this module records it, as the bytes Redis
would hold.

`jobs.run_all()` (alias `join()`) then runs the queued messages in order, each through the
receipt path of a worker of its queue: the envelope decoded from those bytes,
`common.transport.intake.check` (a rejection is dead-lettered, its result made FAILURE; a task
revoked with `common.cancellation.revoke` ends REVOKED unrun), then
the task through Celery's own tracer (`celery.app.trace.trace_task`, not eager mode), so its
result is stored as JSON, a `self.retry()` or `autoretry_for` publishes the retry message
again (run next, its countdown ignored) until `max_retries`, failure hooks fire, and the tasks
it sends are queued behind it. A test then reads the outcome:

    def test_saving_a_doctor_welcomes_them_once(jobs, mailbox):
        emails.send_welcome_email.delay(42)
        assert jobs.queued == [("emails.send_welcome_email", [42], {})]
        jobs.run_all()
        assert jobs.outcome("emails.send_welcome_email").result == {"doctor_id": 42, "status": "sent"}

Redis itself is no edge a task sees, but the locks (`common.transport.locks`), the intake's
outbox-copy keys and the final-failure records talk to it: inside `Jobs()` they get
`MemoryRedis`, an in-process stand-in for the few commands they use, and dead letters are
recorded in `jobs.dead_letters`. Nothing opens a socket (the fast plugin refuses any).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass, field
from typing import Any, cast

from kombu.transport import TRANSPORT_ALIASES, _transport_cache, virtual  # type: ignore[attr-defined]

from devtools.testing import unique_stub
from devtools.testing.memory_redis import MemoryRedis

STUB_URL = "stub://"
MEMORY_RESULTS = "cache+memory://"
WORKER_MODULES = ("emails.tasks", "payments.tasks", "reports.tasks", "sync.tasks")

_active: Jobs | None = None


class NoJobsHarnessError(RuntimeError):
    """A message was published to the stub transport with no `Jobs()` active."""


# --------------------------------------------------------------------------- the transport


class StubChannel(virtual.Channel):
    """kombu's virtual channel: routing and encoding as kombu does them; `_put` records."""

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        pass

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if _active is None:
            raise NoJobsHarnessError(f"a message for queue {queue!r} was published with no Jobs() active")
        _active._put(queue, json.dumps(message).encode(), message)  # as our transport stores it in Redis

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        raise virtual.Empty()  # Jobs.run_all() delivers; nothing consumes through kombu

    def _size(self, queue: str) -> int:
        return sum(1 for m in _active.messages if m.queue == queue) if _active else 0

    def _purge(self, queue: str) -> int:
        return 0

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        pass

    @property
    def client(self) -> MemoryRedis:
        """What the intake asks for its outbox-copy keys (`conn.default_channel.client`)."""
        if _active is None:
            raise NoJobsHarnessError("the stub transport's client is used with no Jobs() active")
        return _active.redis


class StubTransport(virtual.Transport):
    Channel = StubChannel
    state = virtual.BrokerState()
    driver_type = driver_name = "stub"
    default_connection_params = {"hostname": "localhost", "port": None}

    def driver_version(self) -> str:
        return "1"


def _register_transport() -> None:
    TRANSPORT_ALIASES["stub"] = f"{__name__}:StubTransport"
    _transport_cache.pop("stub", None)


# --------------------------------------------------------------------------- the record


@dataclass
class Message:
    """One published message: its queue and the raw bytes as Redis would hold them."""

    queue: str
    raw: bytes

    @property
    def envelope(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def headers(self) -> dict[str, Any]:
        return self.envelope["headers"]

    @property
    def task(self) -> str:
        return self.headers["task"]

    @property
    def id(self) -> str:
        return self.headers["id"]

    @property
    def retries(self) -> int:
        return int(self.headers.get("retries") or 0)

    @property
    def call(self) -> tuple[str, list[Any], dict[str, Any]]:
        """(task name, args, kwargs), decoded from the JSON body."""
        from common.transport import protocol

        args, kwargs, _ = protocol.task_call(self.envelope)
        return self.task, args, kwargs


@dataclass
class Outcome:
    """How one task id ended: its final state and JSON result, as a caller's `.get()` sees it."""

    task: str
    id: str
    state: str
    result: Any
    retries: int
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "SUCCESS"


@dataclass
class DeadLetter:
    queue: str
    reason: str
    detail: str
    task: str | None
    task_id: str | None
    raw: bytes = field(repr=False)


class _DeadLetterRecorder:
    """What `common.deadletters.failures` keeps a final failure with (its Redis store's `add`)."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def add(
        self,
        *,
        queue: str,
        reason: str,
        detail: str,
        raw: bytes,
        task: str | None = None,
        task_id: str | None = None,
        **_: Any,
    ) -> Any:
        self.jobs.dead_letters.append(DeadLetter(queue, reason, detail, task, task_id, raw))
        return type("Entry", (), {"id": f"dl-{len(self.jobs.dead_letters)}"})()


class TooManyMessagesError(AssertionError):
    """run_all() ran more messages than its limit: a task that keeps sending itself?"""


# --------------------------------------------------------------------------- the harness


class Jobs:
    """Record what the producer path publishes; run it as the workers would (module docstring)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []  # still to run, in publish order
        self.published: list[Message] = []  # everything published, in order
        self.ran: list[Message] = []
        self.dead_letters: list[DeadLetter] = []
        self._outcomes: dict[str, Outcome] = {}
        self._order: list[str] = []
        self.redis = MemoryRedis()
        self.unique_pending: dict[str, Message] = {}  # a debounced key's waiting message
        self._saved: list[tuple[Any, dict[str, Any]]] = []
        self._patches: list[tuple[Any, str, Any]] = []

    # -- installing

    def __enter__(self) -> Jobs:
        global _active
        if _active is not None:
            raise RuntimeError("a Jobs() harness is already active")
        _register_transport()
        for apps in _apps():
            self._point(apps, STUB_URL, MEMORY_RESULTS, save=True)
        self._patch_redis_edges()
        _clear_memory_results()
        _forget_broker_outages()
        _active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        _active = None
        for obj, name, value in reversed(self._patches):
            setattr(obj, name, value)
        self._patches.clear()
        for app, conf in self._saved:
            self._point(app, conf["broker_url"], conf["result_backend"])
        self._saved.clear()
        _reset_redis_caches()
        _forget_broker_outages()

    def _point(self, app: Any, broker_url: str, result_backend: str, save: bool = False) -> None:
        if save:
            self._saved.append(
                (app, {"broker_url": app.conf.broker_url, "result_backend": app.conf.result_backend})
            )
        app.conf.broker_url = broker_url
        app.conf.result_backend = result_backend
        app._pool = None
        amqp = app.__dict__.get("amqp")
        if amqp is not None:
            amqp._producer_pool = None
        app._backend_cache = None
        if getattr(app._local, "backend", None) is not None:
            del app._local.backend

    def _patch_redis_edges(self) -> None:
        from common.deadletters import failures
        from common.observability import recent_failures
        from common.transport import locks, tls

        memory = self.redis
        _reset_redis_caches()
        for module in (locks, tls):
            self._set(module, "redis_from_url", lambda *a, **k: memory)
        self._set(failures, "_store", _DeadLetterRecorder(self))
        self._set(recent_failures, "_client", memory)

    def _set(self, obj: Any, name: str, value: Any) -> None:
        self._patches.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    # -- recording

    def _put(self, queue: str, raw: bytes, envelope: dict[str, Any] | None = None) -> None:
        message = Message(queue, raw)
        if envelope is not None and not unique_stub.admit(self, message, envelope):
            return  # a unique task's duplicate: not published (devtools.testing.unique_stub)
        self.messages.append(message)
        self.published.append(message)

    @property
    def queued(self) -> list[tuple[str, list[Any], dict[str, Any]]]:
        """(task name, args, kwargs) of each message waiting to run, decoded from its JSON."""
        return [m.call for m in self.messages]

    def queued_names(self) -> list[str]:
        return [m.task for m in self.messages]

    def clear(self) -> None:
        """Drop what is queued (as purging the queues would)."""
        self.messages.clear()

    # -- running

    def run_all(self, *, limit: int = 1000) -> list[Outcome]:
        """Run every queued message, and those they send, in order; return the outcomes of this run."""
        ran: list[Outcome] = []
        count = 0
        while self.messages:
            count += 1
            if count > limit:
                raise TooManyMessagesError(
                    f"ran {limit} messages and more keep coming: {self.queued_names()[:10]}"
                )
            outcome = self.run_next()
            if outcome is not None:
                ran.append(outcome)
        return ran

    join = run_all

    def run_next(self) -> Outcome | None:
        """Run the oldest queued message; None if the intake rejected it."""
        message = self.messages.pop(0)
        self.ran.append(message)
        return self._deliver(message)

    def deliver_again(self, task_id: str) -> None:
        """Queue the last message of `task_id` again, unchanged: a redelivery (say, after a crash)."""
        for message in reversed(self.published):
            if message.id == task_id:
                self.messages.append(Message(message.queue, message.raw))
                return
        raise KeyError(task_id)

    def _deliver(self, message: Message) -> Outcome | None:
        from celery.app.trace import trace_task
        from kombu.utils.json import object_hook

        from common.transport import dead_letter_store, intake, protocol

        # The names the intake uses (it imports them from the dead-letter store).
        Rejection, DROPPED = dead_letter_store.Rejection, dead_letter_store.DROPPED  # noqa: N806

        app = _app_for(message.queue)
        with _current(app):
            # As our transport admits a fetched message (transport._admit), then the intake.
            payload = protocol.loads_bounded(message.raw.decode(), object_hook=object_hook)
            properties = payload["properties"]
            info = properties.setdefault("delivery_info", {})
            info.setdefault("exchange", "")
            info.setdefault("routing_key", message.queue)
            try:
                intake.check(payload, message.queue)
            except Rejection as rejection:
                if rejection.reason == dead_letter_store.REVOKED:  # REVOKED stored; dropped
                    self._record(rejection.task or "?", rejection.task_id or "", 0, app)
                elif rejection.reason not in DROPPED:
                    self.dead_letters.append(
                        DeadLetter(
                            message.queue,
                            rejection.reason,
                            str(rejection),
                            rejection.task,
                            rejection.task_id,
                            message.raw,
                        )
                    )
                    intake.settle(rejection)
                    if rejection.task_id:
                        self._record(rejection.task or "?", rejection.task_id, 0, app)
                return None
            headers = payload["headers"]
            args, kwargs, embed = protocol.task_call(payload)
            task = app.tasks[headers["task"]]
            request = {
                **headers,
                "delivery_info": {**info, "priority": properties.get("priority"), "redelivered": False},
                "reply_to": properties.get("reply_to"),
                "correlation_id": properties.get("correlation_id"),
                "hostname": f"{message.queue}@fast",
                "is_eager": False,
                "args": args,
                "kwargs": kwargs,
                **(embed or {}),
            }
            trace_task(task, headers["id"], cast("tuple[Any, ...]", args), kwargs, request, app=app)
            return self._record(task.name, headers["id"], int(headers.get("retries") or 0), app)

    def _record(self, name: str, task_id: str, retries: int, app: Any) -> Outcome:
        meta = app.backend.get_task_meta(task_id)
        result = meta.get("result")
        state = meta.get("status")
        outcome = Outcome(name, task_id, state, result, retries, meta.get("traceback"))
        if task_id not in self._outcomes:
            self._order.append(task_id)
        self._outcomes[task_id] = outcome
        return outcome

    # -- reading

    @property
    def outcomes(self) -> list[Outcome]:
        """Each task id's latest outcome (RETRY until its retry ran), in first-run order."""
        return [self._outcomes[t] for t in self._order]

    def outcome(self, name_or_id: str) -> Outcome:
        """The outcome of the task id, or of the only task of that name that ran."""
        if name_or_id in self._outcomes:
            return self._outcomes[name_or_id]
        found = [o for o in self.outcomes if o.task == name_or_id]
        if len(found) != 1:
            raise LookupError(f"{len(found)} outcomes for {name_or_id!r}: {[o.task for o in self.outcomes]}")
        return found[0]

    def results(self, name: str) -> list[Any]:
        return [o.result for o in self.outcomes if o.task == name]


# --------------------------------------------------------------------------- apps


def load_workers() -> list[str]:
    """Import every worker service's tasks this process can import; their names."""
    loaded = []
    for module in WORKER_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            importlib.import_module(module)
            loaded.append(module)
    return loaded


def _apps() -> list[Any]:
    """Every Celery app of this process (the workers' after `load_workers`, and a producer's)."""
    from celery import _state

    from common.celery_app import create_app

    load_workers()
    create_app("producer")
    return list(_state._get_active_apps())


def _app_for(queue: str) -> Any:
    """The app of the worker service consuming `queue` (a service's queue is its name)."""
    from celery import _state

    for app in _state._get_active_apps():
        if app.main == queue:
            return app
    raise LookupError(f"no worker app for queue {queue!r} in this process (is {queue}.tasks importable?)")


class _current:
    """Make `app` the current Celery app, as it is in its own worker process."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __enter__(self) -> None:
        from celery import _state

        self._previous = getattr(_state._tls, "current_app", None)
        _state._tls.current_app = self.app

    def __exit__(self, *exc: Any) -> None:
        from celery import _state

        _state._tls.current_app = self._previous


def _clear_memory_results() -> None:
    from celery.backends import cache

    cache._DUMMY_CLIENT_CACHE.clear()


def _reset_redis_caches() -> None:
    from common.deadletters import failures
    from common.observability import recent_failures
    from common.transport import locks

    locks._client.cache_clear()
    failures._store = None
    recent_failures._client = None


def _forget_broker_outages() -> None:
    """A publish refused before (say, a send with no harness) must not send the next to the outbox."""
    from common import calls

    calls._broker_down_until.clear()

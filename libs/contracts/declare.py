"""How a service declares its tasks, and how a task name finds its declaration.

A contract is data: the task's name `<service>.<function>`, its queue (the service's) and
its parameters with their types. Sending lives elsewhere (`common.calls`), so reading a
contract never pulls in Celery, Django or another service's contract.

A contract keeps Celery's calling API (`.delay`, `.apply_async`, `.s`, `.si`) by
handing the call to the sender bound with `bind_sender` (common.calls binds itself), as a
Dramatiq actor is bound to a broker it does not import.

Arguments are checked twice, with two readings of the same shapes:
- a producer is strict: a dict argument may hold only the keys its shape declares, so a
  name or an email cannot ride along in a payload declared to carry ids;
- a consumer is tolerant of keys it does not know, so an older worker accepts what a newer
  producer adds (an additive change works during a rolling deploy).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import pkgutil
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, Protocol, cast, overload

from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import TypedDict

PRODUCER = ConfigDict(strict=True, extra="forbid")
CONSUMER = ConfigDict(strict=True, extra="ignore")


class UnknownTaskError(LookupError):
    """A task name that no service in this deployable exposes."""


class InvalidTaskArgumentsError(TypeError):
    """Arguments that do not match the task's declared shape."""


class Sender(Protocol):
    def apply_async(self, name: TaskContract, args: Any, kwargs: Any, **options: Any) -> Any: ...
    def signature(self, name: TaskContract, args: Any, kwargs: Any, **options: Any) -> Any: ...


_sender: Sender | None = None


def bind_sender(sender: Sender) -> None:
    """Make `sender` the one that `.delay` and friends go through (common.calls binds itself)."""
    global _sender
    _sender = sender


def _bound() -> Sender:
    if _sender is None:
        raise RuntimeError(
            "A task contract sends through common.calls, which is not loaded in this process: "
            "`import common.calls` (common.celery_app.create_app does) before calling .delay()"
        )
    return _sender


_RATE = re.compile(r"\s*([0-9]{1,9})\s*/\s*(s|m)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60}


@dataclass(frozen=True)
class Rate:
    """At most `count` starts in any window of `seconds`: "5/s" is `Rate(5, 1)`."""

    count: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.count}/{'s' if self.seconds == 1 else 'm'}"


def parse_rate(text: str) -> Rate:
    """ "N/s" or "N/m" (N a positive whole number) as a `Rate`; `ValueError` saying what is
    accepted otherwise (settings name their variable around it)."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValueError(
            f"{str(text)[:40]!r} is not a rate: write N/s or N/m with N a positive whole number, e.g. 5/s"
        )
    return Rate(int(match.group(1)), _UNIT_SECONDS[match.group(2).lower()])


class BatchStatus(TypedDict):
    """What a batch's callback receives as its first argument (`common.batches`): how its
    members ended, ids only. `failed_ids` lists at most the first 1,000; the whole list is
    `common.batches.status(batch_id)`."""

    batch_id: str
    total: int
    succeeded: int
    failed: int
    failed_ids: list[str]


@dataclass(frozen=True)
class RateLimit:
    """A limit shared by every worker of every host (`common.transport.rate_limits`).

    `rate` ("N/s" or "N/m"): at most N of the task start in any such window; `concurrency`: at
    most that many run at once; `per`: the name of a parameter whose value keys the limit (one
    window and one cap per doctor, say), else one for the whole task. A task over its limit
    goes back to the delayed set until it may start; it holds no worker thread meanwhile.
    """

    rate: str | None = None
    concurrency: int | None = None
    per: str | None = None

    def __post_init__(self) -> None:
        if self.rate is None and self.concurrency is None:
            raise ValueError("a RateLimit needs a rate, a concurrency, or both")
        if self.rate is not None:
            parse_rate(self.rate)
        if self.concurrency is not None and (
            not isinstance(self.concurrency, int)
            or isinstance(self.concurrency, bool)
            or self.concurrency < 1
        ):
            raise ValueError(
                f"a RateLimit's concurrency is a positive whole number, not {self.concurrency!r}"
            )

    @property
    def parsed_rate(self) -> Rate | None:
        return parse_rate(self.rate) if self.rate is not None else None


UNIQUE_PREFIX = "jobs.unique:"


@dataclass(frozen=True)
class Unique:
    """A task that is queued at most once per value of `on` (Sidekiq's unique_for/unique_until).

    The key is taken in the same Redis step as the publish and held until the task starts
    (`until="start"`: a send while it runs queues one more) or ends for good
    (`until="finish"`: a retry keeps it), and never longer than `seconds` after it was
    taken or the task started: a killed worker's key runs out. With `debounce` seconds the
    message waits that long, and a later send in the window replaces it (the last wins).
    """

    on: tuple[str, ...]
    until: Literal["start", "finish"] = "start"
    seconds: float = 3600.0
    debounce: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.on, str):
            object.__setattr__(self, "on", (self.on,))
        if self.until not in ("start", "finish"):
            raise ValueError(f"Unique(until=...) is 'start' or 'finish', not {self.until!r}")
        if not (0 < self.seconds < math.inf):
            raise ValueError(
                f"Unique(seconds=...) must be a positive number of seconds, not {self.seconds!r}"
            )
        if not (0 <= self.debounce < self.seconds):
            raise ValueError("Unique(debounce=...) must be at least 0 and shorter than its seconds")


@dataclass(frozen=True)
class TaskContract:
    name: str
    queue: str
    signature: inspect.Signature
    doc: str
    annotations: dict[str, Any] = field(repr=False, compare=False)
    rate_limit: RateLimit | None = field(default=None, compare=False)
    unique: Unique | None = None
    _unique_at: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)
    _adapters: dict[bool, TypeAdapter[Any]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def service(self) -> str:
        return self.queue

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.signature.parameters)

    def check(
        self,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        partial: bool = False,
        tolerant: bool = False,
    ) -> None:
        """Raise `InvalidTaskArgumentsError` unless args/kwargs fit the declaration.

        `partial` is for canvas signatures whose leading argument is the previous step's
        result, filled in by Celery at run time; `tolerant` is the consumer's reading.
        """
        kwargs = kwargs or {}
        try:
            binder = self.signature.bind_partial if partial else self.signature.bind
            bound = binder(*args, **kwargs)
        except TypeError as exc:
            raise InvalidTaskArgumentsError(f"{self.name}{self.signature}: {exc}") from None
        try:
            self._adapter(tolerant).validate_python(dict(bound.arguments))
        except ValidationError as exc:
            # In a union, the deepest error is the branch the value was meant for.
            error = max(exc.errors(include_url=False, include_input=False), key=lambda e: len(e["loc"]))
            param, *path = error["loc"]
            value = bound.arguments[cast(str, param)]  # a parameter's name, then the path in it
            at = f" at {'.'.join(str(p) for p in path)!r}" if path else ""
            raise InvalidTaskArgumentsError(
                f"{self.name}{self.signature}: argument {param!r}{at}: {error['msg']} "
                f"(got {type(value).__name__})"
            ) from None

    def unique_key(self, args: Any = (), kwargs: dict[str, Any] | None = None) -> str | None:
        """The Redis key a `unique` call holds: the task's name and a hash of the JSON of the
        declared arguments (defaults applied), so equal values give one key whatever the
        caller's spelling (positional or keyword); None for a task that is not unique, or
        arguments that do not bind (the worker's intake judges those)."""
        if self.unique is None:
            return None
        positions = self._unique_positions()
        if not kwargs and isinstance(args, list | tuple) and len(args) > max(positions, default=-1) >= 0:
            values = [args[i] for i in positions]  # the common call: positional, nothing to bind
        else:
            try:
                bound = self.signature.bind(*(args or ()), **(kwargs or {}))
            except TypeError:
                return None
            bound.apply_defaults()
            values = [bound.arguments.get(name) for name in self.unique.on]
        # ids (not bools, whose JSON is true/false): json.dumps's own text, without its cost
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            text = "[" + ",".join(map(str, values)) + "]"
        else:
            try:
                text = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            except (TypeError, ValueError):
                text = repr(values)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{UNIQUE_PREFIX}{self.name}:{digest}"

    def _unique_positions(self) -> tuple[int, ...]:
        """Where the declared `on` parameters sit among the positional ones (() if one cannot)."""
        found = self._unique_at.get("at")
        if found is None:
            params = list(self.signature.parameters.values())
            positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            on = self.unique.on if self.unique is not None else ()
            found = tuple(positional.index(n) for n in on) if all(n in positional for n in on) else ()
            self._unique_at["at"] = found
        return found

    # Celery's calling API, sent by name through the bound sender (common.calls).
    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return _bound().apply_async(self, args, kwargs)

    def apply_async(self, args: Any = (), kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        return _bound().apply_async(self, args, kwargs, **options)

    def s(self, *args: Any, **kwargs: Any) -> Any:
        return _bound().signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Any:
        return _bound().signature(self, args, kwargs, immutable=True)

    def _adapter(self, tolerant: bool) -> TypeAdapter[Any]:
        adapter = self._adapters.get(tolerant)
        if adapter is None:  # built on first use: importing a contract stays cheap
            # One TypedDict of the parameters: its config reaches the shapes nested in them
            # (pydantic refuses a config on a TypedDict given on its own).
            fields = {p: NotRequired[self.annotations.get(p, Any)] for p in self.parameters}
            arguments = TypedDict(self.name.replace(".", "_"), fields)  # type: ignore[misc]
            arguments.__pydantic_config__ = CONSUMER if tolerant else PRODUCER  # type: ignore[attr-defined]
            adapter = TypeAdapter(arguments)
            self._adapters[tolerant] = adapter
        return adapter


class ServiceContracts:
    """The tasks one service exposes; `@SERVICE.task` turns a stub into `<service>.<name>`."""

    def __init__(self, service: str) -> None:
        if not service.isidentifier() or service != service.lower():
            raise ValueError(f"a service name is a lower-case identifier, not {service!r}")
        self.service = service
        self._contracts: dict[str, TaskContract] = {}

    @overload
    def task(
        self, stub: Callable[..., Any], *, rate_limit: RateLimit | None = None, unique: Unique | None = None
    ) -> TaskContract: ...

    @overload
    def task(
        self, stub: None = None, *, rate_limit: RateLimit | None = None, unique: Unique | None = None
    ) -> Callable[[Callable[..., Any]], TaskContract]: ...

    def task(
        self,
        stub: Callable[..., Any] | None = None,
        *,
        rate_limit: RateLimit | None = None,
        unique: Unique | None = None,
    ) -> TaskContract | Callable[[Callable[..., Any]], TaskContract]:
        """`@SERVICE.task`, or with options: `@SERVICE.task(rate_limit=RateLimit("5/s",
        per="doctor_id"))`, `@SERVICE.task(unique=Unique(on=("doctor_id",)))`."""
        if stub is None:
            return lambda fn: self.task(fn, rate_limit=rate_limit, unique=unique)
        name = f"{self.service}.{stub.__name__}"
        if name in self._contracts:
            raise ValueError(f"task {name} declared twice")
        signature = inspect.signature(stub, eval_str=True)
        if (
            rate_limit is not None
            and rate_limit.per is not None
            and rate_limit.per not in signature.parameters
        ):
            raise ValueError(f"{name}: rate_limit per={rate_limit.per!r} names no parameter of the task")
        if unique is not None:
            unknown = [p for p in unique.on if p not in signature.parameters]
            if unknown or not unique.on:
                raise ValueError(
                    f"task {name}: Unique(on=...) must name its parameters, not {unknown or '()'}"
                )
        contract = TaskContract(
            name=name,
            queue=self.service,
            signature=signature.replace(return_annotation=inspect.Signature.empty),
            doc=inspect.getdoc(stub) or "",
            annotations={
                p: a for p, a in inspect.get_annotations(stub, eval_str=True).items() if p != "return"
            },
            rate_limit=rate_limit,
            unique=unique,
        )
        self._contracts[name] = contract
        return contract

    def __iter__(self) -> Iterator[TaskContract]:
        return iter(self._contracts.values())

    def __contains__(self, name: object) -> bool:
        return name in self._contracts

    def get(self, name: str) -> TaskContract | None:
        return self._contracts.get(name)


def service_contracts(service: str) -> ServiceContracts | None:
    """The contracts of `service` if this deployable carries them, else None."""
    module_name = f"{__package__}.{service}"
    if not service.isidentifier() or service == "declare":
        return None
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
    except (ImportError, ValueError):
        return None
    declared = getattr(importlib.import_module(module_name), "SERVICE", None)
    return declared if isinstance(declared, ServiceContracts) else None


def available_services() -> list[str]:
    """The services whose contracts this deployable carries."""
    package = importlib.import_module(__package__)
    names = [m.name for m in pkgutil.iter_modules(package.__path__) if m.name != "declare"]
    return sorted(n for n in names if service_contracts(n) is not None)


def all_contracts() -> list[TaskContract]:
    return [c for s in available_services() for c in service_contracts(s) or ()]


def lookup(name: str) -> TaskContract:
    """The contract of the task `name`, found by its `<service>.` prefix."""
    service, _, _ = name.partition(".")
    contracts = service_contracts(service)
    found = contracts.get(name) if contracts is not None else None
    if found is not None:
        return found
    known = all_contracts()
    close = [c.name for c in known if c.name.split(".")[-1] == name.split(".")[-1]]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    where = (
        f"service {service!r} declares no such task"
        if contracts is not None
        else f"this deployable carries no contracts for a service {service!r}"
    )
    raise UnknownTaskError(
        f"No service exposes a task named {name!r} ({where}).{hint} "
        f"Known tasks: {', '.join(sorted(c.name for c in known)) or 'none'}"
    )

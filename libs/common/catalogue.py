"""The catalogue of every task every service exposes: name, queue and argument shape, once.

Producers (the web side, another service) send tasks by name through `common.calls`,
which checks the call against this catalogue before anything reaches the broker, so no
producer imports a consuming service. Each service implements its entries with
`common.celery_app.implements`, which refuses an implementation whose parameters drift
from the declaration. The routing table is derived from here (`routes()`): one table.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

SERVICES = ("emails", "payments", "reports", "sync")

_STRICT = ConfigDict(strict=True)


class UnknownTaskError(LookupError):
    """A task name that no service exposes."""


class InvalidTaskArgumentsError(TypeError):
    """Arguments that do not match the task's declared shape."""


@dataclass(frozen=True)
class TaskContract:
    name: str
    queue: str
    signature: inspect.Signature
    doc: str
    _adapters: dict[str, TypeAdapter[Any]] = field(repr=False, compare=False)

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(self.signature.parameters)

    def check(
        self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *, partial: bool = False
    ) -> None:
        """Raise `InvalidTaskArgumentsError` unless args/kwargs fit the declaration.

        `partial` is for canvas signatures whose leading argument is the previous
        step's result, filled in by Celery at run time.
        """
        kwargs = kwargs or {}
        try:
            binder = self.signature.bind_partial if partial else self.signature.bind
            bound = binder(*args, **kwargs)
        except TypeError as exc:
            raise InvalidTaskArgumentsError(f"{self.name}{self.signature}: {exc}") from None
        for param, value in bound.arguments.items():
            try:
                self._adapters[param].validate_python(value)
            except ValidationError as exc:
                problem = exc.errors(include_url=False, include_input=False)[0]["msg"]
                raise InvalidTaskArgumentsError(
                    f"{self.name}{self.signature}: argument {param!r}: {problem} (got {type(value).__name__})"
                ) from None

    # The chapter's calling API, checked against this contract and sent by name.
    def delay(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        from common import calls

        return calls.apply_async(self.name, args, kwargs)

    def apply_async(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any):  # type: ignore[no-untyped-def]
        from common import calls

        return calls.apply_async(self.name, args, kwargs, **options)

    def s(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        from common import calls

        return calls.signature(self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        from common import calls

        return calls.signature(self.name, args, kwargs, immutable=True)


class Catalogue:
    def __init__(self) -> None:
        self._contracts: dict[str, TaskContract] = {}

    def declare(self, service: str) -> Callable[[Callable[..., Any]], TaskContract]:
        """Decorator turning a stub function into the contract `<service>.<function name>`."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; services are {SERVICES}")

        def register(stub: Callable[..., Any]) -> TaskContract:
            name = f"{service}.{stub.__name__}"
            if name in self._contracts:
                raise ValueError(f"task {name} declared twice")
            hints = inspect.get_annotations(stub, eval_str=True)
            signature = inspect.signature(stub, eval_str=True)
            adapters = {p: TypeAdapter(hints.get(p, Any), config=_STRICT) for p in signature.parameters}
            contract = TaskContract(
                name=name,
                queue=service,
                signature=signature.replace(return_annotation=inspect.Signature.empty),
                doc=inspect.getdoc(stub) or "",
                _adapters=adapters,
            )
            self._contracts[name] = contract
            return contract

        return register

    def get(self, name: str) -> TaskContract:
        try:
            return self._contracts[name]
        except KeyError:
            close = [n for n in self._contracts if n.split(".")[-1] == name.split(".")[-1]]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownTaskError(
                f"No service exposes a task named {name!r}.{hint} "
                f"Known tasks: {', '.join(sorted(self._contracts))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._contracts

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._contracts.values())

    def names(self, service: str | None = None) -> list[str]:
        return sorted(c.name for c in self if service is None or c.queue == service)

    def routes(self) -> dict[str, dict[str, str]]:
        """The routing table: every task name to its service's queue."""
        return {c.name: {"queue": c.queue} for c in self}


CATALOGUE = Catalogue()
emails = CATALOGUE.declare("emails")
payments = CATALOGUE.declare("payments")
reports = CATALOGUE.declare("reports")
sync = CATALOGUE.declare("sync")


# --- emails -----------------------------------------------------------------
@emails
def send_welcome_email(doctor_id: int) -> dict:
    """Welcome a doctor; sent once per doctor however often it is delivered."""


@emails
def send_onboarding_email(data: dict) -> dict:
    """Onboarding-chain step: welcome the doctor named by `data["doctor_id"]`."""


@emails
def send_appointment_reminder(appointment_id: int) -> dict:
    """Remind the patient of one appointment; once per appointment."""


@emails
def send_daily_reminders() -> dict:
    """Daily 08:00 job: fan out one reminder per appointment due in the next day."""


@emails
def notify_admin(data: int | dict | list) -> dict:
    """Tell the platform admin about an event or a batch of results."""


# --- sync (CRM) -------------------------------------------------------------
@sync
def validate_doctor(doctor_id: int) -> dict:
    """Check a doctor's record is complete enough to onboard."""


@sync
def create_account(data: dict) -> dict:
    """Onboarding-chain step: create the doctor's CRM account."""


@sync
def sync_doctor_to_external_system(doctor_id: int) -> dict:
    """Push one doctor to the CRM, retrying with backoff on request errors."""


@sync
def sync_all_doctors() -> dict:
    """Hourly job: fan out one sync per doctor, at most one run at a time."""


@sync
def echo(value: int) -> int:
    """Round-trip probe through the sync queue (latency checks, the benchmark)."""


@sync
def health_check() -> dict:
    """Every 300 s: check the broker and database answer."""


# --- payments ---------------------------------------------------------------
@payments
def process_payment(appointment_id: int) -> dict:
    """Charge an appointment exactly once, however often the task is delivered."""


@payments
def reconcile_payments() -> dict:
    """Every 300 s: settle payments a crash left pending/processing by asking the gateway by key."""


# --- reports ----------------------------------------------------------------
@reports
def generate_large_report(report_id: int) -> dict:
    """Build a report file, publishing PROGRESS as it goes."""


@reports
def generate_weekly_report() -> dict:
    """Monday 09:00 job: create and build the weekly appointments report."""

"""What the web side sends when something is created in it: the work follows the data.

- a new `Doctor` gets `emails.send_welcome_email` and `sync.sync_doctor_to_external_system`;
- a new `Appointment` booked with an amount gets `payments.process_payment`.

Only on create, never on a later save. The tasks go through `common.calls` (the contracts'
`.delay()`): inside the admin's save transaction they are kept in the outbox and published
once it commits, so a rolled-back save sends nothing.

The receivers are connected in `WebConfig.ready()`, not on the models in `libs/common`,
because the workers save those models too and must never re-enqueue. They also produce only
where the web side acts for someone: during a request (`EventsMiddleware`, i.e. the admin and
any view), or inside `producing()` (a management command or a shell that means it). A
process that merely loads the web settings (a test, a migration, the outbox relay) creating
a doctor sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db.models.signals import post_save
from django.http import HttpRequest, HttpResponse

from common import calls  # noqa: F401  (binds the contracts' .delay() to the outbox sender)
from common.models import Appointment, Doctor
from contracts import emails, payments, sync

logger = logging.getLogger(__name__)

_producing: ContextVar[bool] = ContextVar("web_events_producing", default=False)


@contextmanager
def producing() -> Iterator[None]:
    """Within this block, creating a Doctor or an Appointment sends its tasks."""
    token = _producing.set(True)
    try:
        yield
    finally:
        _producing.reset(token)


def is_producing() -> bool:
    return _producing.get()


class EventsMiddleware:
    """Every request to the web side produces the work its saves call for."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with producing():
            return self.get_response(request)


def doctor_created(
    sender: type[Doctor], instance: Doctor, created: bool, raw: bool = False, **_: Any
) -> None:
    if not created or raw or not is_producing():
        return
    welcome = emails.send_welcome_email.delay(instance.pk)
    synced = sync.sync_doctor_to_external_system.delay(instance.pk)
    logger.info("Doctor %s created: welcome email %s, CRM sync %s queued", instance.pk, welcome.id, synced.id)


def appointment_booked(
    sender: type[Appointment], instance: Appointment, created: bool, raw: bool = False, **_: Any
) -> None:
    # Appointments have no booking status: one is booked when it is created. Without an
    # amount there is nothing to charge (and process_payment would refuse it).
    if not created or raw or not is_producing() or not instance.amount or instance.amount <= 0:
        return
    charge = payments.process_payment.delay(instance.pk)
    logger.info("Appointment %s booked: payment %s queued", instance.pk, charge.id)


def connect() -> None:
    """Called once by `WebConfig.ready()`; the uids keep a second call from doubling the sends."""
    post_save.connect(doctor_created, sender=Doctor, dispatch_uid="web.events.doctor_created")
    post_save.connect(appointment_booked, sender=Appointment, dispatch_uid="web.events.appointment_booked")

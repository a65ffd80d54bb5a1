"""Sentry from real workers to a loopback ingest endpoint: one scrubbed event per real failure."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from common.celery_app import current_app
from common.models import Appointment, Doctor, Patient
from contracts import payments
from devtools.sandboxes.sentry import SentrySink
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def sentry() -> Iterator[SentrySink]:
    with SentrySink() as sink:
        yield sink


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str], sentry: SentrySink) -> Iterator[Workers]:
    w = Workers(data_dir)
    env = {**peers_env, "SENTRY_DSN": sentry.dsn, "SENTRY_TRACES_SAMPLE_RATE": "0", "RELEASE": "9.9.9"}
    try:
        w.start(["sync", "payments"], env={"sync": env, "payments": env})
        yield w
    finally:
        w.stop()


def appointment(customer: str) -> Appointment:
    n = Doctor.objects.count()
    doctor = Doctor.objects.create(first_name="Sen", last_name=f"Try{n}", email=f"sentry{n}@clinic.example")
    patient = Patient.objects.create(
        name="Pat Sentry", email=f"ps{n}@mail.example", gateway_customer_id=customer
    )
    return Appointment.objects.create(
        doctor=doctor, patient=patient, amount=Decimal(10), scheduled_at=datetime.now(UTC)
    )


def settle(seconds: float = 3) -> None:
    time.sleep(seconds)  # the SDK sends from a background thread


def test_retry_ignore_and_reject_report_nothing(workers, sentry: SentrySink, gateway_sandbox) -> None:
    paid = appointment("cus_ok")
    payments.process_payment.delay(paid.pk).get(timeout=30)
    payments.process_payment.delay(paid.pk)  # Ignore
    declined = appointment("cus_decline_sentry")
    payments.process_payment.delay(declined.pk)  # a business outcome (`throws`)
    wait_until(lambda: Appointment.objects.get(pk=declined.pk).payment_status == "declined")
    gateway_sandbox.faults.fail = 1  # the next charge gets a 503
    retried = payments.process_payment.delay(appointment("cus_ok").pk)  # Retry in 60 s
    wait_until(lambda: retried.state == "RETRY")
    settle()
    assert sentry.events == []


def test_a_failing_task_sends_exactly_one_tagged_event_without_pii(workers, sentry: SentrySink) -> None:
    data = {
        "doctor_id": 424242,
        "valid": True,
        "problems": [],
        "email": "private.person@mail.example",
        "name": "Private Person",
    }
    # Sent unchecked, as an older or foreign producer could: the contract refuses a name.
    result = current_app().send_task("sync.create_account", args=[data])
    with pytest.raises(Exception, match="does not exist"):
        result.get(timeout=30)
    deadline = time.monotonic() + 15
    while not sentry.events and time.monotonic() < deadline:
        time.sleep(0.2)
    settle(2)
    [event] = sentry.events
    assert event["tags"]["service"] == "sync"
    assert event["transaction"] == "sync.create_account"
    assert event["release"] == "sync@9.9.9" and event["environment"] == "test"
    text = json.dumps(event)
    assert "DoesNotExist" in text
    assert "private.person@mail.example" not in text and "Private Person" not in text
    assert "@mail.example" not in text

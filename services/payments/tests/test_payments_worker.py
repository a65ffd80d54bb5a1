"""Payments against real workers, PostgreSQL row locks and an HTTP gateway sandbox."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from common import catalogue
from common.celery_app import current_app
from common.models import Appointment, Doctor, Patient, Payment
from common.processes import ServiceProcess, wait_for_workers
from common.testing.waiting import wait_until
from common.testing.workers import Workers


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[list[str]]:
    """Two independent payments worker processes, to race against each other."""
    assert connection.vendor == "postgresql", "these tests need row locks: TEST_DATABASE=postgres"
    w = Workers(data_dir)
    w.start(["payments"], env={"payments": peers_env})
    second = ServiceProcess(
        "payments-2",
        "payments.worker",
        ["--hostname=payments2@%h", "--without-mingle", "--without-gossip"],
        env={"DJANGO_SETTINGS_MODULE": "common.django_settings", **peers_env},
        log=data_dir / "payments2-worker.log",
    ).start()
    try:
        names = [w.names["payments"], wait_for_workers(current_app(), ["payments2"], timeout=90)["payments2"]]
        yield names
    finally:
        second.stop()
        w.stop()


@pytest.fixture
def make_appointment() -> Callable[..., Appointment]:
    def make(customer: str = "cus_ok", amount: str = "80.00") -> Appointment:
        n = Doctor.objects.count()
        doctor = Doctor.objects.create(first_name="Doc", last_name=f"Tor{n}", email=f"doc{n}@clinic.example")
        patient = Patient.objects.create(
            name="Pat", email=f"pat{n}@mail.example", gateway_customer_id=customer
        )
        return Appointment.objects.create(
            doctor=doctor, patient=patient, amount=Decimal(amount), scheduled_at=datetime.now(UTC)
        )

    return make


def queue_drained(workers: list[str]) -> bool:
    active = current_app().control.inspect(destination=workers, timeout=5).active() or {}
    return current_app().connection().default_channel.client.llen("payments") == 0 and not any(
        active.values()
    )


def charges_for(gateway, appt: Appointment) -> list[dict]:  # type: ignore[no-untyped-def]
    return [c for c in gateway.charges if c["idempotency_key"] == f"appointment-{appt.pk}"]


def requests_for(gateway, appt: Appointment) -> list[dict]:  # type: ignore[no-untyped-def]
    return [r for r in gateway.requests if r["headers"].get("Idempotency-Key") == f"appointment-{appt.pk}"]


def test_success_charges_once_and_marks_the_appointment_paid(
    workers, gateway_sandbox, make_appointment
) -> None:  # type: ignore[no-untyped-def]
    appt = make_appointment()
    result = catalogue.process_payment.delay(appt.pk).get(timeout=30)
    [charge] = charges_for(gateway_sandbox, appt)
    assert result == {"status": "success", "payment_id": charge["id"]}
    assert charge["amount"] == "80.00" and charge["customer"] == "cus_ok"
    appt.refresh_from_db()
    assert (appt.is_paid, appt.payment_id, appt.payment_status) == (True, charge["id"], "paid")


def test_duplicates_racing_on_two_workers_charge_exactly_once(
    workers, gateway_sandbox, make_appointment
) -> None:  # type: ignore[no-untyped-def]
    appt = make_appointment()
    gateway_sandbox.latency = 0.5  # every charge is slow, so the duplicates overlap in time
    for _ in range(6):
        catalogue.process_payment.delay(appt.pk)
    wait_until(lambda: Appointment.objects.get(pk=appt.pk).is_paid)
    wait_until(lambda: queue_drained(workers))
    assert len(charges_for(gateway_sandbox, appt)) == 1
    # Not merely deduplicated by the gateway: the row lock let only one delivery reach it.
    assert len(requests_for(gateway_sandbox, appt)) == 1
    payment = Payment.objects.get(appointment=appt)
    assert payment.status == "succeeded" and payment.attempts == 1, "the losers saw it paid and ignored it"


def test_already_paid_is_ignored_without_calling_the_gateway(
    workers, gateway_sandbox, make_appointment
) -> None:  # type: ignore[no-untyped-def]
    appt = make_appointment()
    catalogue.process_payment.delay(appt.pk).get(timeout=30)
    calls_before = len(gateway_sandbox.requests)
    again = catalogue.process_payment.delay(appt.pk)
    wait_until(lambda: again.state != "PENDING")
    wait_until(lambda: queue_drained(workers))
    assert again.state == "STARTED", "Ignore stores no result"
    assert len(gateway_sandbox.requests) == calls_before


def test_declined_is_rejected_not_retried_and_marked(workers, gateway_sandbox, make_appointment) -> None:  # type: ignore[no-untyped-def]
    appt = make_appointment(customer="cus_decline_1")
    catalogue.process_payment.delay(appt.pk)
    wait_until(lambda: Appointment.objects.get(pk=appt.pk).payment_status == "declined")
    wait_until(lambda: queue_drained(workers))
    time.sleep(1)
    assert not charges_for(gateway_sandbox, appt)
    assert Payment.objects.get(appointment=appt).attempts == 1, "declines are final: no retry"
    assert not Appointment.objects.get(pk=appt.pk).is_paid


def test_gateway_error_is_retried_in_60_seconds(workers, gateway_sandbox, make_appointment) -> None:  # type: ignore[no-untyped-def]
    appt = make_appointment()
    gateway_sandbox.faults.fail = 1
    result = catalogue.process_payment.delay(appt.pk)
    wait_until(lambda: result.state == "RETRY")
    payment = Payment.objects.get(appointment=appt)
    assert payment.status == "pending" and "503" in payment.last_error
    scheduled = current_app().control.inspect(destination=workers, timeout=5).scheduled() or {}
    etas = [
        datetime.fromisoformat(t["eta"])
        for ts in scheduled.values()
        for t in ts
        if t["request"]["id"] == result.id
    ]
    assert len(etas) == 1
    assert 50 <= (etas[0] - datetime.now(UTC)).total_seconds() <= 61
    assert not Appointment.objects.get(pk=appt.pk).is_paid

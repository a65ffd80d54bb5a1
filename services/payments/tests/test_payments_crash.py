"""A worker SIGKILLed while the gateway charges: the committed row lets reconcile settle it."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from common.celery_app import current_app
from common.models import Appointment, Payment
from contracts import payments
from devtools.processes import ServiceProcess, wait_for_workers
from devtools.testing.waiting import wait_until


def start_worker(name: str, data_dir: Path, peers_env: dict[str, str]) -> ServiceProcess:
    proc = ServiceProcess(
        name,
        "payments.worker",
        [f"--hostname={name}@%h", "--without-mingle", "--without-gossip"],
        env={"DJANGO_SETTINGS_MODULE": "common.django_settings", **peers_env},
        log=data_dir / f"{name}-worker.log",
    ).start()
    wait_for_workers(current_app(), [name], timeout=90)
    return proc


@pytest.fixture
def doomed(data_dir: Path, peers_env: dict[str, str]) -> Iterator[ServiceProcess]:
    """The only payments worker, to be killed mid-charge."""
    assert connection.vendor == "postgresql"
    proc = start_worker("payments-doomed", data_dir, peers_env)
    yield proc
    proc.stop()


def test_a_charge_whose_worker_was_killed_is_settled_by_reconcile(
    doomed: ServiceProcess,
    data_dir: Path,
    peers_env: dict[str, str],
    gateway_sandbox,
    make_appointment: Callable[..., Appointment],
) -> None:
    appt = make_appointment()
    gateway_sandbox.latency = 3
    payments.process_payment.delay(appt.pk)
    wait_until(lambda: Payment.objects.filter(appointment=appt).exists())
    key = Payment.objects.get(appointment=appt).idempotency_key  # random, committed before the call
    wait_until(lambda: any(r["headers"].get("Idempotency-Key") == key for r in gateway_sandbox.requests))
    assert doomed.proc is not None
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # mid-request: the gateway charges, nobody records it
    doomed.proc.wait()
    wait_until(lambda: any(c["idempotency_key"] == key for c in gateway_sandbox.charges))
    [charge] = [c for c in gateway_sandbox.charges if c["idempotency_key"] == key]
    payment = Payment.objects.get(appointment=appt)
    assert (payment.status, payment.idempotency_key) == ("processing", key), "the row predates the charge"
    assert not Appointment.objects.get(pk=appt.pk).is_paid

    gateway_sandbox.latency = 0
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now() - timedelta(minutes=10))
    survivor = start_worker("payments-survivor", data_dir, peers_env)
    try:
        outcome = payments.reconcile_payments.delay().get(timeout=60)
        assert outcome["status"] == "done"
        # The killed delivery may also come back (broker recovery) and settle it first, under
        # the same key: either way the one charge is recorded and nothing is charged twice.
        wait_until(lambda: Appointment.objects.get(pk=appt.pk).is_paid)
    finally:
        survivor.stop()
    payment.refresh_from_db()
    assert (payment.status, payment.gateway_payment_id) == ("succeeded", charge["id"])
    assert Appointment.objects.get(pk=appt.pk).payment_id == charge["id"]
    assert [c["idempotency_key"] for c in gateway_sandbox.charges].count(key) == 1

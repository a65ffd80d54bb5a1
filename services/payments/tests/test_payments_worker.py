"""Payments against real workers, PostgreSQL row locks and an HTTP gateway sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from django.db import connection
from django.utils import timezone

from common.celery_app import current_app
from common.models import Appointment, Payment
from common.transport.broker.scripts import DELAYED
from common.transport.locks import task_lock
from contracts import payments
from devtools.processes import ServiceProcess, wait_for_workers
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers


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


def queue_drained(workers: list[str]) -> bool:
    active = current_app().control.inspect(destination=workers, timeout=5).active() or {}
    return current_app().connection().default_channel.client.llen("payments") == 0 and not any(
        active.values()
    )


def stored_key(appt: Appointment) -> str:
    return Payment.objects.get(appointment=appt).idempotency_key


def mine(appt: Appointment, key: str, wanted: str | None) -> bool:
    """Is `key` the key `wanted`, or (None) any key of `appt` (keys are appointment-<pk>-<random>)?"""
    return key == wanted if wanted is not None else key.startswith(f"appointment-{appt.pk}-")


def keys_used(gateway, appt: Appointment) -> list[str]:
    """The distinct keys the workers charged `appt` under, in the order they were first sent."""
    keys = [r["headers"].get("Idempotency-Key", "") for r in gateway.requests if r["method"] == "POST"]
    return list(dict.fromkeys(k for k in keys if mine(appt, k, None)))


def charges_for(gateway, appt: Appointment, key: str | None = None) -> list[dict]:
    return [c for c in gateway.charges if mine(appt, c["idempotency_key"], key)]


def requests_for(gateway, appt: Appointment, key: str | None = None) -> list[dict]:
    return [
        r
        for r in gateway.requests
        if r["method"] == "POST" and mine(appt, r["headers"].get("Idempotency-Key", ""), key)
    ]


def lookups_for(gateway, appt: Appointment) -> list[dict]:
    return [r for r in gateway.requests if r["method"] == "GET" and f"appointment-{appt.pk}-" in r["path"]]


def charge_directly(
    gateway, appt: Appointment, key: str | None = None, amount: str | None = None, customer: str = "cus_ok"
) -> str:
    """What a worker's request did before the worker died: the gateway charged under the key."""
    reply = requests.post(
        f"{gateway.url}/v1/charges",
        json={"amount": amount or str(appt.amount), "currency": appt.currency, "customer": customer},
        headers={"Idempotency-Key": key or stored_key(appt)},
        timeout=10,
    )
    reply.raise_for_status()
    return str(reply.json()["id"])


def claimed_payment(appt: Appointment, *, age: timedelta, status: str = "processing") -> Payment:
    """The row a worker commits before calling the gateway, last touched `age` ago."""
    payment = Payment.objects.create(
        appointment=appt,
        idempotency_key=Payment.new_idempotency_key(appt.pk),
        amount=appt.amount,
        currency=appt.currency,
        gateway_customer_id=appt.patient.gateway_customer_id,
        status=status,
        attempts=1,
    )
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now() - age)
    return payment


def retry_etas(redis_client, task_id: str) -> list[datetime]:
    """ETAs of the task's waiting retries: the broker keeps them in its delayed set, not a worker."""
    etas = []
    for member in redis_client.zrange(DELAYED, 0, -1):
        headers = json.loads(member.decode().split("\n", 1)[1]).get("headers") or {}
        if headers.get("id") == task_id:
            etas.append(datetime.fromisoformat(headers["eta"]))
    return etas


def reconcile() -> dict:
    return payments.reconcile_payments.delay().get(timeout=60)


def test_success_charges_once_and_marks_the_appointment_paid(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment()
    result = payments.process_payment.delay(appt.pk).get(timeout=30)
    [charge] = charges_for(gateway_sandbox, appt)
    assert result == {"status": "success", "payment_id": charge["id"]}
    assert charge["amount"] == "80.00" and charge["customer"] == "cus_ok"
    appt.refresh_from_db()
    assert (appt.is_paid, appt.payment_id, appt.payment_status) == (True, charge["id"], "paid")
    payment = Payment.objects.get(appointment=appt)
    assert (payment.status, payment.idempotency_key, payment.attempts) == (
        "succeeded",
        charge["idempotency_key"],
        1,
    )
    assert payment.idempotency_key != f"appointment-{appt.pk}-1", "not derived from the pk alone"
    assert payment.gateway_customer_id == "cus_ok"


def test_the_payment_row_and_its_key_are_committed_before_the_gateway_is_called(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment()
    gateway_sandbox.latency = 2
    result = payments.process_payment.delay(appt.pk)
    wait_until(lambda: requests_for(gateway_sandbox, appt))
    # The gateway has the request in hand and has not answered: the row is already visible.
    [request] = requests_for(gateway_sandbox, appt)
    payment = Payment.objects.get(appointment=appt)
    assert (payment.status, payment.idempotency_key, payment.attempts) == (
        "processing",
        request["headers"]["Idempotency-Key"],
        1,
    )
    assert result.get(timeout=30)["status"] == "success"


def test_duplicates_racing_on_two_workers_charge_exactly_once(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment()
    gateway_sandbox.latency = 0.5  # every charge is slow, so the duplicates overlap in time
    results = [payments.process_payment.delay(appt.pk) for _ in range(6)]
    outcomes = [r.get(timeout=30) for r in results]
    wait_until(lambda: queue_drained(workers))
    assert len(charges_for(gateway_sandbox, appt)) == 1
    # Not merely deduplicated by the gateway: the claim let only one delivery reach it.
    assert len(requests_for(gateway_sandbox, appt)) == 1
    payment = Payment.objects.get(appointment=appt)
    assert payment.status == "succeeded" and payment.attempts == 1, "the losers saw it claimed or paid"
    statuses = sorted(o["status"] for o in outcomes)
    assert statuses.count("success") == 1
    assert set(statuses) - {"success"} <= {"in_progress", "already_paid"}
    assert {r.state for r in results} == {"SUCCESS"}, "no duplicate is left STARTED"


def test_a_duplicate_of_a_paid_appointment_answers_the_first_outcome_without_calling_the_gateway(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment()
    first = payments.process_payment.delay(appt.pk).get(timeout=30)
    calls_before = len(gateway_sandbox.requests)
    again = payments.process_payment.delay(appt.pk)
    assert again.get(timeout=30) == {"status": "already_paid", "payment_id": first["payment_id"]}
    wait_until(lambda: queue_drained(workers))
    assert again.state == "SUCCESS", "a duplicate leaves no STARTED behind"
    assert len(gateway_sandbox.requests) == calls_before


def test_a_duplicate_during_a_fresh_claim_leaves_the_gateway_alone(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment()
    payment = claimed_payment(appt, age=timedelta(seconds=30))  # another worker is charging
    result = payments.process_payment.delay(appt.pk)
    assert result.get(timeout=30) == {"status": "in_progress", "payment_id": None}
    assert result.state == "SUCCESS"
    assert not requests_for(gateway_sandbox, appt)
    payment.refresh_from_db()
    assert (payment.status, payment.attempts) == ("processing", 1)
    Payment.objects.filter(pk=payment.pk).update(status="failed")  # nothing for later reconciles


def test_a_stale_claim_is_taken_over_under_the_same_key(workers, gateway_sandbox, make_appointment) -> None:
    appt = make_appointment()
    claimed_payment(appt, age=timedelta(minutes=10))
    charged = charge_directly(gateway_sandbox, appt)  # the dead worker's request got through
    assert payments.process_payment.delay(appt.pk).get(timeout=30) == {
        "status": "success",
        "payment_id": charged,
    }
    assert len(charges_for(gateway_sandbox, appt)) == 1, "the same key: the gateway answered its charge"
    assert Payment.objects.get(appointment=appt).attempts == 2


def test_declined_fails_at_once_without_retry_and_marks_it(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment(customer="cus_decline_1")
    result = payments.process_payment.delay(appt.pk)
    with pytest.raises(Exception, match="card_declined") as raised:
        result.get(timeout=30)
    assert type(raised.value).__name__ == "PaymentDeclinedError"
    assert result.state == "FAILURE", "not left STARTED: a caller's .get() returns"
    wait_until(lambda: queue_drained(workers))
    time.sleep(1)
    assert not charges_for(gateway_sandbox, appt)
    payment = Payment.objects.get(appointment=appt)
    assert (payment.status, payment.attempts, payment.last_error) == ("declined", 1, "card_declined")
    appt.refresh_from_db()
    assert (appt.is_paid, appt.payment_status) == (False, "declined")


def test_a_fixed_card_is_charged_under_a_new_key_after_a_decline(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment(customer="cus_decline_fixable")
    with pytest.raises(Exception, match="card_declined"):
        payments.process_payment.delay(appt.pk).get(timeout=30)
    # Sent again with the card unchanged, the first key would be declined again: a new key.
    with pytest.raises(Exception, match="card_declined"):
        payments.process_payment.delay(appt.pk).get(timeout=30)
    assert len(keys_used(gateway_sandbox, appt)) == 2
    assert Payment.objects.get(appointment=appt).idempotency_key == keys_used(gateway_sandbox, appt)[1]
    appt.patient.gateway_customer_id = "cus_ok_card_fixed"
    appt.patient.save()
    result = payments.process_payment.delay(appt.pk).get(timeout=30)
    keys = keys_used(gateway_sandbox, appt)
    [charge] = charges_for(gateway_sandbox, appt, keys[2])
    assert result == {"status": "success", "payment_id": charge["id"]}
    assert charge["customer"] == "cus_ok_card_fixed"
    assert [len(requests_for(gateway_sandbox, appt, k)) for k in keys] == [1, 1, 1]
    payment = Payment.objects.get(appointment=appt)
    assert (payment.status, payment.key_number, payment.attempts) == ("succeeded", 3, 3)
    assert payment.idempotency_key == keys[2]
    appt.refresh_from_db()
    assert (appt.is_paid, appt.payment_status) == (True, "paid")


def test_gateway_error_is_retried_in_60_seconds_under_the_same_key(
    workers, gateway_sandbox, make_appointment, redis_client
) -> None:
    appt = make_appointment()
    gateway_sandbox.faults.fail = 1
    result = payments.process_payment.delay(appt.pk)
    wait_until(lambda: result.state == "RETRY")
    payment = Payment.objects.get(appointment=appt)
    assert payment.status == "pending" and "503" in payment.last_error
    wait_until(lambda: retry_etas(redis_client, result.id))
    etas = retry_etas(redis_client, result.id)
    assert len(etas) == 1
    assert 50 <= (etas[0] - datetime.now(UTC)).total_seconds() <= 61
    assert not Appointment.objects.get(pk=appt.pk).is_paid
    # Any later attempt (here a fresh delivery, sooner than the retry) keeps the key.
    assert payments.process_payment.delay(appt.pk).get(timeout=30)["status"] == "success"
    assert len(requests_for(gateway_sandbox, appt)) == 2 and len(charges_for(gateway_sandbox, appt)) == 1
    assert keys_used(gateway_sandbox, appt) == [payment.idempotency_key]


@pytest.mark.parametrize(
    ("amount", "currency", "problem"),
    [
        ("0.00", "EUR", "amount must be greater than 0 (got 0.00)"),
        ("-5.00", "EUR", "amount must be greater than 0 (got -5.00)"),
        ("80.00", "XYZ", "currency 'XYZ' is not an active ISO 4217 code"),
        ("80.00", "eur", "currency 'eur' is not an active ISO 4217 code"),
    ],
)
def test_an_invalid_amount_or_currency_is_refused_without_calling_the_gateway(
    workers, gateway_sandbox, make_appointment, amount: str, currency: str, problem: str
) -> None:
    appt = make_appointment(amount=amount, currency=currency)
    result = payments.process_payment.delay(appt.pk)
    with pytest.raises(Exception, match="cannot be charged") as raised:
        result.get(timeout=30)
    assert type(raised.value).__name__ == "InvalidPaymentError"
    assert str(raised.value) == f"appointment {appt.pk} cannot be charged: {problem}"
    assert result.state == "FAILURE"
    appt.refresh_from_db()
    assert (appt.is_paid, appt.payment_status) == (False, "failed")
    assert not Payment.objects.filter(appointment=appt).exists()
    assert not requests_for(gateway_sandbox, appt)
    wait_until(lambda: queue_drained(workers))
    time.sleep(1)
    assert not requests_for(gateway_sandbox, appt), "refused for good, not retried"


def test_an_appointment_made_invalid_after_a_failed_attempt_fails_its_payment(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment()
    payment = claimed_payment(appt, age=timedelta(minutes=1), status="pending")  # a retry is due
    Appointment.objects.filter(pk=appt.pk).update(amount=Decimal("0"))
    with pytest.raises(Exception, match="amount must be greater than 0"):
        payments.process_payment.delay(appt.pk).get(timeout=30)
    payment.refresh_from_db()
    assert payment.status == "failed", "else the reconcile job would send it again every run"
    assert payment.last_error == "amount must be greater than 0 (got 0.00)"
    assert not requests_for(gateway_sandbox, appt)


def test_reconcile_marks_paid_a_charge_whose_worker_died_before_recording_it(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment()
    payment = claimed_payment(appt, age=timedelta(minutes=10))
    charged = charge_directly(gateway_sandbox, appt)
    outcome = reconcile()
    assert outcome["status"] == "done" and outcome["paid"] >= 1
    payment.refresh_from_db()
    assert (payment.status, payment.gateway_payment_id) == ("succeeded", charged)
    appt.refresh_from_db()
    assert (appt.is_paid, appt.payment_id, appt.payment_status) == (True, charged, "paid")
    assert len(lookups_for(gateway_sandbox, appt)) == 1 and len(charges_for(gateway_sandbox, appt)) == 1


def test_reconcile_sends_again_a_payment_the_gateway_never_charged(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment()
    claimed_payment(appt, age=timedelta(minutes=10))  # the worker died before its request left
    outcome = reconcile()
    assert outcome["status"] == "done" and outcome["resent"] >= 1
    wait_until(lambda: Appointment.objects.get(pk=appt.pk).is_paid)
    [charge] = charges_for(gateway_sandbox, appt)
    payment = Payment.objects.get(appointment=appt)
    assert (payment.status, payment.gateway_payment_id, payment.attempts) == ("succeeded", charge["id"], 2)


def test_reconcile_leaves_recent_payments_alone(workers, gateway_sandbox, make_appointment) -> None:
    appt = make_appointment()
    payment = claimed_payment(appt, age=timedelta(minutes=2))  # under the 5 minutes default
    reconcile()
    assert not lookups_for(gateway_sandbox, appt)
    payment.refresh_from_db()
    assert payment.status == "processing"
    Payment.objects.filter(pk=payment.pk).update(status="failed")  # nothing for later reconciles


def test_reconcile_stops_when_the_gateway_does_not_answer(workers, gateway_sandbox, make_appointment) -> None:
    appt = make_appointment()
    payment = claimed_payment(appt, age=timedelta(days=1))  # the oldest: looked up first
    gateway_sandbox.faults.fail = 1
    outcome = reconcile()
    assert outcome["status"] == "done"
    assert (outcome["unreachable"], outcome["paid"], outcome["resent"]) == (1, 0, 0)
    payment.refresh_from_db()
    assert payment.status == "processing", "unknown is not 'never charged': left for the next run"
    assert reconcile()["resent"] >= 1
    wait_until(lambda: Appointment.objects.get(pk=appt.pk).is_paid)


def test_one_reconcile_run_at_a_time(workers, gateway_sandbox, make_appointment) -> None:
    appt = make_appointment()
    claimed_payment(appt, age=timedelta(minutes=10))
    with task_lock("payments.reconcile_payments") as held:
        assert held
        outcome = reconcile()
    assert outcome["status"] == "skipped" and outcome["checked"] == 0
    assert not lookups_for(gateway_sandbox, appt)
    assert reconcile()["resent"] >= 1
    wait_until(lambda: Appointment.objects.get(pk=appt.pk).is_paid)


def test_a_reused_primary_key_is_never_paid_with_another_customers_charge(
    workers, gateway_sandbox, gateway_kind, make_appointment
) -> None:
    """Issue 21 item 9: a restore from an older backup hands an old booking's pk to a new one.

    The gateway still holds the old booking's 10.00 charge under `appointment-<pk>-1`, the key
    the old code derived from the pk. The new 250.00 booking must be charged on its own.
    """
    appt = make_appointment(customer="cus_new_customer", amount="250.00")
    old_key = f"appointment-{appt.pk}-1"
    old_charge = charge_directly(gateway_sandbox, appt, old_key, amount="10.00", customer="cus_old_customer")
    result = payments.process_payment.delay(appt.pk).get(timeout=30)
    appt.refresh_from_db()
    assert appt.payment_id != old_charge, "marked paid with another customer's charge"
    [charge] = [c for c in charges_for(gateway_sandbox, appt) if c["idempotency_key"] != old_key]
    assert (charge["amount"], charge["customer"]) == ("250.00", "cus_new_customer")
    assert result == {"status": "success", "payment_id": charge["id"]}
    assert (appt.is_paid, appt.payment_id, appt.payment_status) == (True, charge["id"], "paid")
    payment = Payment.objects.get(appointment=appt)
    assert (payment.status, payment.idempotency_key) == ("succeeded", charge["idempotency_key"])
    assert not requests_for(gateway_sandbox, appt, old_key)[1:], "the old key was never sent by a worker"


def test_reconcile_does_not_mark_paid_a_charge_that_is_not_the_payments(
    workers, gateway_sandbox, make_appointment
) -> None:
    appt = make_appointment(customer="cus_reconcile_mine", amount="250.00")
    payment = claimed_payment(appt, age=timedelta(minutes=10))
    # Under the payment's own key the gateway holds a charge for another amount and customer.
    other = charge_directly(gateway_sandbox, appt, amount="10.00", customer="cus_reconcile_other")
    outcome = reconcile()
    assert outcome["status"] == "done" and outcome["mismatch"] >= 1
    payment.refresh_from_db()
    assert payment.status == "mismatch" and payment.gateway_payment_id == ""
    assert (
        other in payment.last_error and "amount differs (gateway 10.00, payment 250.00)" in payment.last_error
    )
    assert "customer differs" in payment.last_error and "cus_reconcile" not in payment.last_error
    appt.refresh_from_db()
    assert (appt.is_paid, appt.payment_id, appt.payment_status) == (False, "", "failed")
    # Left for an operator: a later run does not look at it again, a delivery does not charge it.
    reconcile()
    assert len(lookups_for(gateway_sandbox, appt)) == 1
    with pytest.raises(Exception, match="marked mismatch") as raised:
        payments.process_payment.delay(appt.pk).get(timeout=30)
    assert type(raised.value).__name__ == "ChargeMismatchError"
    assert len(requests_for(gateway_sandbox, appt)) == 1, "only the seeded charge; no worker charged"


def test_a_decline_is_logged_once_without_a_traceback(
    workers, gateway_sandbox, make_appointment, data_dir: Path
) -> None:
    """A declined card is a business outcome: one line, no traceback, no ERROR."""
    appt = make_appointment(customer="cus_decline_logged")
    result = payments.process_payment.delay(appt.pk)
    with pytest.raises(Exception, match="card_declined"):
        result.get(timeout=30)
    wait_until(lambda: queue_drained(workers))
    time.sleep(1)  # the worker's last lines for this task reach its log file
    logs = [p.read_text().splitlines() for p in data_dir.glob("payments*-worker.log")]
    mine = [(log, i) for log in logs for i, line in enumerate(log) if result.id in line]
    print("\n".join(log[i] for log, i in mine))
    outcome = [(log, i) for log, i in mine if "card_declined" in log[i]]
    assert len(outcome) == 1, "\n".join(log[i] for log, i in mine)
    [(log, i)] = outcome
    assert ("INFO" in log[i] or "WARNING" in log[i]) and "ERROR" not in log[i]
    # No traceback follows it, and no other record of this task names the decline.
    assert i + 1 == len(log) or log[i + 1].startswith("["), log[i + 1]
    assert all("ERROR" not in log[j] for log, j in mine)
    assert result.state == "FAILURE" and type(result.result).__name__ == "PaymentDeclinedError"

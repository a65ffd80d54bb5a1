"""payments.process_payment and reconcile_payments as they end in production, in-process.

The gateway is faked at the HTTP edge (requests answered on our client's own session): the
task's claim, its idempotency key, its retries and its records are the real ones.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from common.models import Appointment, Payment
from contracts import payments


def charged(appointment):
    appointment.refresh_from_db()
    return appointment


def test_a_payment_is_charged_once_and_the_appointment_marked_paid(jobs, gateway, make_appointment):
    appt = make_appointment()
    payments.process_payment.delay(appt.pk)
    assert jobs.queued == [("payments.process_payment", [appt.pk], {})]
    jobs.run_all()
    outcome = jobs.outcome("payments.process_payment")
    assert outcome.state == "SUCCESS"
    assert outcome.result == {"status": "success", "payment_id": "ch_1"}
    appt = charged(appt)
    assert appt.is_paid and appt.payment_id == "ch_1"
    assert appt.payment_status == Appointment.PaymentStatus.PAID
    assert Payment.objects.get(appointment=appt).status == Payment.Status.SUCCEEDED
    assert len(gateway.charge_calls()) == 1


def test_the_charge_asks_for_the_appointments_amount_currency_and_customer(jobs, gateway, make_appointment):
    appt = make_appointment(customer="cus_42", amount="12.50", currency="USD")
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    (call,) = gateway.charge_calls()
    assert call.json == {"amount": "12.50", "currency": "USD", "customer": "cus_42"}
    assert call.headers["Idempotency-Key"].startswith(f"appointment-{appt.pk}-")
    assert call.headers["Idempotency-Key"] == Payment.objects.get(appointment=appt).idempotency_key


def test_a_declined_card_fails_once_without_a_retry(jobs, gateway, make_appointment):
    appt = make_appointment(customer="cus_declined")
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    outcome = jobs.outcome("payments.process_payment")
    assert outcome.state == "FAILURE"
    assert type(outcome.result).__name__ == "PaymentDeclinedError"
    assert len(jobs.ran) == 1
    assert charged(appt).payment_status == Appointment.PaymentStatus.DECLINED
    assert Payment.objects.get(appointment=appt).status == Payment.Status.DECLINED
    assert jobs.dead_letters == []  # a business outcome, not owed work


def test_a_card_fixed_after_a_decline_is_charged_under_a_new_key(jobs, gateway, make_appointment):
    appt = make_appointment(customer="cus_declined")
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    gateway.declining.clear()
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    first, second = (c.headers["Idempotency-Key"] for c in gateway.charge_calls())
    assert first != second
    assert charged(appt).is_paid
    assert Payment.objects.get(appointment=appt).key_number == 2


@pytest.mark.parametrize("outage", ["http_503", "unreachable"])
def test_a_gateway_error_is_retried_under_the_same_key_and_then_paid(jobs, gateway, make_appointment, outage):
    appt = make_appointment()
    if outage == "http_503":
        gateway.fail_next(2)
    else:
        gateway.down = 2
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    assert [m.retries for m in jobs.ran] == [0, 1, 2]
    outcome = jobs.outcome("payments.process_payment")
    assert (outcome.state, outcome.retries) == ("SUCCESS", 2)
    keys = {c.headers["Idempotency-Key"] for c in gateway.charge_calls()}
    assert len(keys) == 1
    assert len(gateway.charges) == 1
    assert charged(appt).is_paid


def test_a_retry_message_carries_the_tasks_countdown(jobs, gateway, make_appointment):
    appt = make_appointment()
    gateway.fail_next(1)
    payments.process_payment.delay(appt.pk)
    jobs.run_next()
    (retry,) = jobs.messages
    assert retry.retries == 1
    assert retry.headers["eta"] is not None  # RETRY_COUNTDOWN: the harness runs it at once
    assert jobs.outcome("payments.process_payment").state == "RETRY"


def test_a_gateway_that_stays_down_fails_the_payment_after_three_retries(jobs, gateway, make_appointment):
    appt = make_appointment()
    gateway.down = 10
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    outcome = jobs.outcome("payments.process_payment")
    assert (outcome.state, outcome.retries) == ("FAILURE", 3)
    assert type(outcome.result).__name__ == "PaymentGatewayError"
    assert len(gateway.calls) == 4
    assert Payment.objects.get(appointment=appt).status == Payment.Status.FAILED
    assert charged(appt).payment_status == Appointment.PaymentStatus.FAILED
    assert not charged(appt).is_paid


def test_a_duplicate_delivery_charges_once(jobs, gateway, make_appointment):
    appt = make_appointment()
    result = payments.process_payment.delay(appt.pk)
    jobs.run_all()
    jobs.deliver_again(result.id)
    jobs.run_all()
    assert [m.id for m in jobs.ran] == [result.id, result.id]
    assert len(gateway.charge_calls()) == 1
    # The stored SUCCESS is never overwritten by the second delivery (Celery's backend keeps it).
    assert jobs.outcome(result.id).result == {"status": "success", "payment_id": "ch_1"}
    assert Payment.objects.get(appointment=appt).attempts == 1


def test_the_same_payment_sent_twice_charges_once(jobs, gateway, make_appointment):
    appt = make_appointment()
    payments.process_payment.delay(appt.pk)
    payments.process_payment.delay(appt.pk)
    outcomes = jobs.run_all()
    assert [o.result["status"] for o in outcomes] == ["success", "already_paid"]
    assert len(gateway.charge_calls()) == 1


@pytest.mark.parametrize(
    ("amount", "currency", "problem"), [("0.00", "EUR", "amount"), ("10.00", "EUX", "currency")]
)
def test_an_appointment_that_cannot_be_charged_fails_without_calling_the_gateway(
    jobs, gateway, make_appointment, amount, currency, problem
):
    appt = make_appointment(amount=amount, currency=currency)
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    outcome = jobs.outcome("payments.process_payment")
    assert outcome.state == "FAILURE"
    assert type(outcome.result).__name__ == "InvalidPaymentError"
    assert problem in str(outcome.result)
    assert gateway.calls == []
    assert len(jobs.ran) == 1
    assert charged(appt).payment_status == Appointment.PaymentStatus.FAILED


def test_a_charge_that_is_not_this_payments_is_never_marked_paid(jobs, gateway, make_appointment):
    appt = make_appointment(amount="80.00")
    gateway.http.handle = lambda call: (
        200,
        {"id": "ch_other", "amount": "8.00", "currency": "eur", "customer": call.json["customer"]},
    )
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    outcome = jobs.outcome("payments.process_payment")
    assert outcome.state == "FAILURE"
    assert type(outcome.result).__name__ == "ChargeMismatchError"
    assert not charged(appt).is_paid
    assert Payment.objects.get(appointment=appt).status == Payment.Status.MISMATCH
    # A later delivery refuses it too, without asking the gateway again.
    calls_before = len(gateway.calls)
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    assert len(gateway.calls) == calls_before
    assert jobs.outcomes[-1].state == "FAILURE"


def test_a_key_refused_as_used_for_other_parameters_is_a_mismatch_not_a_retry(
    jobs, gateway, make_appointment
):
    appt = make_appointment()
    gateway.http.handle = lambda call: (400, {"type": "idempotency_error"})
    payments.process_payment.delay(appt.pk)
    jobs.run_all()
    assert len(jobs.ran) == 1
    assert type(jobs.outcome("payments.process_payment").result).__name__ == "ChargeMismatchError"
    assert Payment.objects.get(appointment=appt).status == Payment.Status.MISMATCH


def test_booking_inside_a_transaction_sends_the_payment_after_the_commit(jobs, gateway, make_appointment):
    with transaction.atomic():
        appt = make_appointment()
        payments.process_payment.delay(appt.pk)
        assert jobs.queued == []
    assert jobs.queued == [("payments.process_payment", [appt.pk], {})]


def test_a_booking_rolled_back_sends_no_payment(jobs, gateway, make_appointment):
    with pytest.raises(ValueError), transaction.atomic():
        appt = make_appointment()
        payments.process_payment.delay(appt.pk)
        raise ValueError("booking failed")
    assert jobs.run_all() == []
    assert gateway.calls == []


def _stale_claim(appt, key="appointment-x-stale"):
    payment = Payment.objects.create(
        appointment=appt,
        idempotency_key=key,
        amount=appt.amount,
        currency=appt.currency,
        gateway_customer_id=appt.patient.gateway_customer_id,
        status=Payment.Status.PROCESSING,
    )
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    return payment


def test_reconcile_marks_paid_a_payment_the_gateway_charged_before_a_crash(jobs, gateway, make_appointment):
    appt = make_appointment()
    payment = _stale_claim(appt)
    gateway.charges[payment.idempotency_key] = {
        "id": "ch_crashed",
        "amount": "80.00",
        "currency": "eur",
        "customer": "cus_ok",
    }
    payments.reconcile_payments.delay()
    jobs.run_all()
    assert jobs.outcome("payments.reconcile_payments").result["paid"] == 1
    assert charged(appt).payment_id == "ch_crashed"
    assert gateway.charge_calls() == []


def test_reconcile_sends_again_a_payment_the_gateway_never_charged(jobs, gateway, make_appointment):
    appt = make_appointment()
    payment = _stale_claim(appt)
    payments.reconcile_payments.delay()
    outcomes = jobs.run_all()
    assert [o.task for o in outcomes] == ["payments.reconcile_payments", "payments.process_payment"]
    assert outcomes[0].result["resent"] == 1
    assert outcomes[1].result["status"] == "success"
    (call,) = gateway.charge_calls()
    assert call.headers["Idempotency-Key"] == payment.idempotency_key  # the same key: no double charge
    assert charged(appt).is_paid


def test_reconcile_leaves_fresh_claims_alone(jobs, gateway, make_appointment):
    appt = make_appointment()
    payment = _stale_claim(appt)
    Payment.objects.filter(pk=payment.pk).update(updated_at=timezone.now())
    payments.reconcile_payments.delay()
    jobs.run_all()
    assert jobs.outcome("payments.reconcile_payments").result["checked"] == 0
    assert gateway.calls == []


def test_only_one_reconcile_runs_at_a_time(jobs, gateway):
    jobs.redis.set("lock:payments.reconcile_payments", "another-run", nx=True)
    payments.reconcile_payments.delay()
    jobs.run_all()
    assert jobs.outcome("payments.reconcile_payments").result["status"] == "skipped"

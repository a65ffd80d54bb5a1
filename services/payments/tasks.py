"""The payments service's tasks, as declared in `contracts.payments`.

A charge goes in three steps, so no money moves without a committed row naming its key:

1. claim, in a short transaction holding the appointment's row lock: create or update the
   `Payment` with its idempotency key (random, `Payment.new_idempotency_key`, made here for a
   new payment and after a decline, else the stored one) and the amount, currency and
   customer that key charges, mark it `processing`, count the attempt, commit;
2. call the gateway, holding no lock and no transaction;
3. check the gateway's answer against the stored amount, currency and customer, and record
   the outcome in a second short transaction: only a charge that matches marks it paid.

The claim is what keeps racing deliveries from charging concurrently once the lock is
released: a delivery that finds a fresh `processing` claim leaves the gateway alone. A crash
between steps 1 and 3 leaves a `processing` row that `reconcile_payments` settles by asking
the gateway by key; and should two requests ever overlap, they carry the same key, which the
gateway dedupes.

Keys used to be `appointment-<pk>-<n>`: after a restore from an older backup reused a primary
key, a new booking's key was an old booking's, and the gateway answered with that old charge.
Now the key is unguessable and made once per charge, and an answer that is not this payment's
(another amount or customer, or the gateway's "key used for other parameters") is never
marked paid: the payment becomes `mismatch` and the task fails with `ChargeMismatchError`
(logged and reported, no personal data), and no delivery charges it again. An operator
settles it at the gateway (refund, or confirm), then either marks it paid by hand or sets
the payment's status to `declined`, which makes the next "Charge now" use a fresh key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from celery import Task
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from common.celery_app import implements
from common.models import Appointment, Payment
from common.transport.locks import task_lock
from common.transport.rate_limits import RateLimited
from contracts import payments as contract
from payments import gateway
from payments.app import app
from payments.config import get_payment_settings

logger = logging.getLogger(__name__)

RETRY_COUNTDOWN = 60
RECONCILE_BATCH = 200  # rows per run, oldest first; the rest wait for the next run


class InvalidPaymentError(ValueError):
    """The appointment cannot be charged as it is (amount, currency): fix the row, then resend."""


ChargeMismatchError = gateway.ChargeMismatchError


@dataclass(frozen=True)
class Claim:
    """What step 2 needs, read under the lock in step 1."""

    appointment_id: int
    payment_id: int
    key: str
    amount: Decimal
    currency: str
    customer_id: str


def _problem(appt: Appointment) -> str | None:
    """Why the gateway must not be asked to charge this appointment, or None."""
    return "; ".join(appt.charge_problems()) or None


def _claim(appointment_id: int) -> Claim | dict[str, Any] | InvalidPaymentError | ChargeMismatchError:
    """Step 1: commit a `processing` Payment with its key, or say why no charge is due."""
    stale_before = timezone.now() - timedelta(seconds=get_payment_settings().reconcile_after)
    with transaction.atomic():
        appt = (
            Appointment.objects.select_for_update(of=("self",))
            .select_related("patient")
            .get(pk=appointment_id)
        )
        if appt.is_paid:
            return {"status": "already_paid", "payment_id": appt.payment_id}
        payment = Payment.objects.select_for_update().filter(appointment=appt).first()
        if payment is not None and payment.status == Payment.Status.PROCESSING:
            if payment.updated_at >= stale_before:
                return {"status": "in_progress", "payment_id": None}
            # A claim this old has no live worker behind it: take it over, same key.
        if payment is not None and payment.status == Payment.Status.MISMATCH:
            return ChargeMismatchError(
                f"appointment {appt.pk}: payment {payment.pk} is marked mismatch (the gateway answered "
                "with a charge that is not this payment's); not charged again: settle it at the "
                "gateway, then set the payment's status to declined to charge under a new key"
            )
        problem = _problem(appt)
        if problem is not None:
            appt.payment_status = Appointment.PaymentStatus.FAILED
            appt.save(update_fields=["payment_status"])
            if payment is not None and payment.status != Payment.Status.SUCCEEDED:
                if payment.status in (Payment.Status.PENDING, Payment.Status.PROCESSING):
                    payment.status = Payment.Status.FAILED  # else reconcile would resend it forever
                payment.last_error = problem
                payment.save()
            return InvalidPaymentError(f"appointment {appt.pk} cannot be charged: {problem}")
        customer_id = appt.patient.gateway_customer_id
        if payment is None:
            payment = Payment(
                appointment=appt,
                idempotency_key=Payment.new_idempotency_key(appt.pk),
                amount=appt.amount,
                currency=appt.currency,
                gateway_customer_id=customer_id,
            )
        elif payment.status == Payment.Status.DECLINED:
            # The gateway replays a decline for its key forever: a fixed card needs a new key.
            payment.key_number += 1
            payment.idempotency_key = Payment.new_idempotency_key(appt.pk)
            payment.amount, payment.currency = appt.amount, appt.currency
            payment.gateway_customer_id = customer_id
        elif not payment.gateway_customer_id:
            payment.gateway_customer_id = customer_id  # a row from before the column existed
        # Otherwise (pending retry, failed and resent, stale claim) the key stays, and with it what
        # it was first sent for: if the gateway charged under it already, it answers with that
        # charge instead of charging again (a key sent with other parameters would be refused).
        payment.status = Payment.Status.PROCESSING
        payment.attempts += 1
        payment.save()
        if appt.payment_status != Appointment.PaymentStatus.PENDING:
            appt.payment_status = Appointment.PaymentStatus.PENDING
            appt.save(update_fields=["payment_status"])
        return Claim(
            appointment_id=appt.pk,
            payment_id=payment.pk,
            key=payment.idempotency_key,
            amount=payment.amount,
            currency=payment.currency,
            customer_id=payment.gateway_customer_id,
        )


def _record(
    claim: Claim,
    *,
    charge_id: str | None = None,
    declined: str | None = None,
    mismatch: str | None = None,
    error: str | None = None,
    final: bool = False,
) -> None:
    """Step 3: store what the gateway said about `claim` (`charge_id`: a charge checked to match)."""
    with transaction.atomic():
        appt = Appointment.objects.select_for_update(of=("self",)).get(pk=claim.appointment_id)
        payment = Payment.objects.select_for_update().get(pk=claim.payment_id)
        if payment.idempotency_key != claim.key:
            # Our claim went stale and another delivery moved on to a new key meanwhile.
            if charge_id is not None:
                logger.error(
                    "Charge %s made under superseded key %s (payment %s now uses %s): refund it",
                    charge_id,
                    claim.key,
                    payment.pk,
                    payment.idempotency_key,
                )
            return
        if mismatch is not None:
            if payment.status == Payment.Status.SUCCEEDED:
                # Another delivery recorded a matching charge under this key meanwhile: the
                # gateway answered it differently; the record stays, the operator is told.
                logger.error("Payment %s: paid, but a later answer for its key did not match", payment.pk)
                return
            _mark_mismatch(payment, appt, mismatch)
            return
        if charge_id is not None:
            payment.status = Payment.Status.SUCCEEDED
            payment.gateway_payment_id = charge_id
            payment.last_error = ""
            appt.is_paid = True
            appt.payment_id = charge_id
            appt.payment_status = Appointment.PaymentStatus.PAID
        elif payment.status == Payment.Status.SUCCEEDED:
            return  # reconcile settled it meanwhile; a late error changes nothing
        elif declined is not None:
            payment.status = Payment.Status.DECLINED
            payment.last_error = declined
            appt.payment_status = Appointment.PaymentStatus.DECLINED
        else:
            payment.status = Payment.Status.FAILED if final else Payment.Status.PENDING
            payment.last_error = error or ""
            if final:
                appt.payment_status = Appointment.PaymentStatus.FAILED
        payment.save()
        appt.save(update_fields=["is_paid", "payment_id", "payment_status"])


def _mark_mismatch(payment: Payment, appt: Appointment, reason: str) -> None:
    """Not paid, not retried: the payment waits for an operator (under the caller's row locks)."""
    payment.status = Payment.Status.MISMATCH
    payment.last_error = reason
    payment.save()
    appt.payment_status = Appointment.PaymentStatus.FAILED
    appt.save(update_fields=["payment_status"])


def _mismatch_reason(charge: gateway.Charge | None, problems: list[str]) -> str:
    said = f"the gateway answered charge {charge.id[:64]} under this payment's key" if charge else ""
    return "; ".join(filter(None, [said, *problems])) + ": not marked paid; settle it at the gateway"


# STARTED marks a payment in flight for the admin and on-call; every outcome below replaces it.
# Declines and invalid appointments are business outcomes (`throws`): Celery logs them as one
# INFO line without a traceback, and neither the failure reporter nor Sentry reports them
# (common.observability.outcomes).
def _unclaim(claim: Claim) -> None:
    """Hand back a claim whose charge was not sent (over PAYMENT_GATEWAY_RATE_LIMIT): the row is
    pending again, its key and attempt count as before, so the delivery after the wait claims it
    (a `processing` row would make it answer `in_progress` and never charge)."""
    Payment.objects.filter(pk=claim.payment_id, status=Payment.Status.PROCESSING).update(
        status=Payment.Status.PENDING, attempts=F("attempts") - 1, updated_at=timezone.now()
    )


@implements(
    app,
    contract.process_payment,
    bind=True,
    max_retries=3,
    track_started=True,
    throws=(gateway.PaymentDeclinedError, InvalidPaymentError),
)
def process_payment(self: Task, appointment_id: int) -> dict[str, Any]:
    """Charge an appointment once, its Payment row committed before the gateway is called.

    Every delivery ends in a final state (none is left STARTED):
    - charged: SUCCESS `{"status": "success", "payment_id": <charge id>}`;
    - a duplicate of a paid appointment: SUCCESS `{"status": "already_paid", "payment_id": ...}`;
    - a duplicate while another delivery is charging: SUCCESS `{"status": "in_progress", ...}`;
      neither duplicate calls the gateway;
    - declined: FAILURE `PaymentDeclinedError`, not retried; once the card is fixed, send the
      task again: it charges under a new key;
    - the gateway answered with a charge that is not this payment's (amount, currency or
      customer differ, or the key was refused as used for other parameters): FAILURE
      `ChargeMismatchError`, not retried, not marked paid, the payment left `mismatch` for an
      operator (logged as an error and reported: it is an incident, not a business outcome);
      a later delivery refuses it the same way without calling the gateway;
    - amount <= 0 or a currency that is no active ISO 4217 code: FAILURE `InvalidPaymentError`
      naming the problem, the appointment marked failed, the gateway not called, not retried;
      fix the appointment and send the task again;
    - gateway unreachable or 5xx: RETRY in 60 s under the same key, FAILURE after 3 retries.
    Declines and invalid appointments are outcomes, not bugs: logged once, never sent to Sentry.
    """
    claim = _claim(appointment_id)
    if isinstance(claim, dict):
        logger.info("Appointment %s: %s, gateway not called", appointment_id, claim["status"])
        return claim
    if isinstance(claim, InvalidPaymentError | ChargeMismatchError):
        raise claim
    try:
        charge = gateway.charge(
            amount=claim.amount,
            currency=claim.currency,
            customer_id=claim.customer_id,
            idempotency_key=claim.key,
        )
    except RateLimited:
        _unclaim(claim)  # waits for its turn in the delayed set, never left processing
        raise
    except gateway.PaymentDeclinedError as exc:
        _record(claim, declined=str(exc))
        raise
    except gateway.ChargeMismatchError as exc:
        reason = _mismatch_reason(None, [str(exc)])
        _record(claim, mismatch=reason)
        raise ChargeMismatchError(f"appointment {claim.appointment_id}: {reason}") from None
    except gateway.PaymentGatewayError as exc:
        final = self.request.retries >= cast(int, self.max_retries)
        _record(claim, error=str(exc), final=final)
        logger.warning("Payment gateway error for %s: %s", claim.key, exc)
        raise self.retry(exc=exc, countdown=RETRY_COUNTDOWN) from None
    problems = gateway.mismatches(
        charge, amount=claim.amount, currency=claim.currency, customer_id=claim.customer_id
    )
    if problems:
        reason = _mismatch_reason(charge, problems)
        _record(claim, mismatch=reason)
        raise ChargeMismatchError(f"appointment {claim.appointment_id}: {reason}")
    _record(claim, charge_id=charge.id)
    return {"status": "success", "payment_id": charge.id}


def _settle(
    payment_id: int, appointment_id: int, key: str, charge: gateway.Charge | None, cutoff: datetime
) -> str:
    """Apply the gateway's answer for `key`, unless the row moved on since it was read."""
    with transaction.atomic():
        appt = (
            Appointment.objects.select_for_update(of=("self",))
            .select_related("patient")
            .get(pk=appointment_id)
        )
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        unsettled = (Payment.Status.PENDING, Payment.Status.PROCESSING)
        if payment.idempotency_key != key or payment.status not in unsettled or payment.updated_at >= cutoff:
            return "skipped"
        if charge is not None:
            problems = gateway.mismatches(
                charge,
                amount=payment.amount,
                currency=payment.currency,
                customer_id=payment.gateway_customer_id or appt.patient.gateway_customer_id,
            )
            if problems:
                _mark_mismatch(payment, appt, "reconcile: " + _mismatch_reason(charge, problems))
                logger.error(
                    "Reconcile: payment %s (appointment %s) not marked paid, the gateway's charge "
                    "under its key does not match it: %s",
                    payment.pk,
                    appt.pk,
                    "; ".join(problems),
                )
                return "mismatch"
            payment.status = Payment.Status.SUCCEEDED
            payment.gateway_payment_id = charge.id
            payment.last_error = ""
            payment.save()
            appt.is_paid = True
            appt.payment_id = charge.id
            appt.payment_status = Appointment.PaymentStatus.PAID
            appt.save(update_fields=["is_paid", "payment_id", "payment_status"])
            logger.info("Reconciled %s: charged as %s, marked paid", key, charge.id)
            return "paid"
        payment.status = Payment.Status.PENDING  # releases the claim for the delivery sent below
        payment.last_error = "reconcile: the gateway holds no charge for this key; sent again"
        payment.save()
        transaction.on_commit(lambda: contract.process_payment.delay(appointment_id))
        logger.info("Reconciled %s: no charge at the gateway, process_payment sent again", key)
        return "resent"


@implements(app, contract.reconcile_payments)
def reconcile_payments() -> dict[str, Any]:
    """Settle payments left pending/processing longer than PAYMENT_RECONCILE_AFTER (300 s).

    A row that old has no live worker behind it (a charge call is bounded by the gateway
    timeout), so the gateway's answer for its key decides:
    - a charge exists: a worker crashed after charging; if it matches the payment's amount,
      currency and customer, the payment succeeds and the appointment is paid, else the
      payment is left `mismatch` for an operator (counted as "mismatch");
    - none: no money moved; the row goes back to pending and process_payment is sent again,
      which charges under the same key (and leaves a bad appointment marked failed).
    One run at a time (the Redis lock), at most 200 rows per run, oldest first. An unreachable
    gateway ends the run; the next run tries again.
    """
    counts = {"checked": 0, "paid": 0, "resent": 0, "mismatch": 0, "skipped": 0, "unreachable": 0}
    with task_lock("payments.reconcile_payments", timeout=600) as held:
        if not held:
            return {"status": "skipped", "reason": "another reconcile run holds the lock", **counts}
        cutoff = timezone.now() - timedelta(seconds=get_payment_settings().reconcile_after)
        rows = list(
            Payment.objects.filter(
                status__in=(Payment.Status.PENDING, Payment.Status.PROCESSING), updated_at__lt=cutoff
            )
            .order_by("updated_at")
            .values_list("pk", "appointment_id", "idempotency_key")[:RECONCILE_BATCH]
        )
        for payment_id, appointment_id, key in rows:
            counts["checked"] += 1
            try:
                charge = gateway.find_charge(key)
            except gateway.PaymentGatewayError as exc:
                counts["unreachable"] += 1
                logger.warning("Reconcile stopped at %s, the gateway did not answer: %s", key, exc)
                break
            counts[_settle(payment_id, appointment_id, key, charge, cutoff)] += 1
    return {"status": "done", **counts}

"""The payments service's tasks, as declared in `common.catalogue`."""

from __future__ import annotations

import logging

from celery.exceptions import Ignore, Reject
from django.db import transaction

from common import catalogue
from common.celery_app import implements
from common.models import Appointment, Payment
from payments import gateway
from payments.app import app

logger = logging.getLogger(__name__)


# STARTED marks a payment in flight for the admin and on-call (a crash mid-charge is visible).
@implements(app, catalogue.process_payment, bind=True, max_retries=3, track_started=True)
def process_payment(self, appointment_id: int) -> dict:  # type: ignore[no-untyped-def]
    """Charge once: the row lock serialises racing deliveries, the key dedupes at the gateway."""
    error: gateway.PaymentGatewayError | None = None
    with transaction.atomic():
        appt = (
            Appointment.objects.select_for_update(of=("self",))
            .select_related("patient")
            .get(pk=appointment_id)
        )
        if appt.is_paid:
            logger.info("Appointment %s already paid, skipping", appointment_id)
            raise Ignore()
        payment, _ = Payment.objects.get_or_create(
            appointment=appt,
            defaults={
                "idempotency_key": f"appointment-{appt.pk}",
                "amount": appt.amount,
                "currency": appt.currency,
            },
        )
        payment.attempts += 1
        try:
            charge_id = gateway.charge(
                amount=appt.amount,
                currency=appt.currency,
                customer_id=appt.patient.gateway_customer_id,
                idempotency_key=payment.idempotency_key,
            )
        except gateway.PaymentDeclinedError as exc:
            payment.status = Payment.Status.DECLINED
            payment.last_error = str(exc)
            payment.save()
            appt.payment_status = Appointment.PaymentStatus.DECLINED
            appt.save(update_fields=["payment_status"])
            declined = str(exc)
        except gateway.PaymentGatewayError as exc:
            error = exc
            final = self.request.retries >= self.max_retries
            payment.status = Payment.Status.FAILED if final else Payment.Status.PENDING
            payment.last_error = str(exc)
            payment.save()
            if final:
                appt.payment_status = Appointment.PaymentStatus.FAILED
                appt.save(update_fields=["payment_status"])
        else:
            payment.status = Payment.Status.SUCCEEDED
            payment.gateway_payment_id = charge_id
            payment.last_error = ""
            payment.save()
            appt.is_paid = True
            appt.payment_id = charge_id
            appt.payment_status = Appointment.PaymentStatus.PAID
            appt.save(update_fields=["is_paid", "payment_id", "payment_status"])
            return {"status": "success", "payment_id": charge_id}
    # Outside the transaction, so the declined/failed marks above are committed first.
    if error is not None:
        logger.warning("Payment gateway error for appointment %s: %s", appointment_id, error)
        raise self.retry(exc=error, countdown=60)
    raise Reject(reason=f"Payment declined: {declined}", requeue=False)

"""The emails service's tasks, as declared in `contracts.emails`."""

from __future__ import annotations

import logging
import smtplib
from datetime import timedelta

from django.utils import timezone

from common import calls
from common.celery_app import implements
from common.models import Appointment, Doctor
from contracts import emails as contract
from emails import mailer
from emails.app import app
from emails.config import get_mail_settings
from emails.ledger import MailBusyError, send_once

logger = logging.getLogger(__name__)

RETRY = {
    "autoretry_for": (smtplib.SMTPException, ConnectionError, TimeoutError, MailBusyError),
    "retry_backoff": True,
    "retry_backoff_max": 600,
    "retry_jitter": True,
    "max_retries": 5,
    "dead_letter": True,  # a mail still owed after every retry is kept for replay
}


def _welcome(doctor_id: int) -> dict:
    try:
        doctor = Doctor.objects.get(pk=doctor_id)
    except Doctor.DoesNotExist:
        return {"doctor_id": doctor_id, "status": "skipped", "reason": "doctor not found"}
    sent = send_once(
        f"welcome:doctor:{doctor.pk}",
        subject="Welcome to our platform",
        body=f"Welcome Dr. {doctor.first_name}!",
        to=[doctor.email],
    )
    return {"doctor_id": doctor_id, "status": "sent" if sent else "already_sent"}


@implements(app, contract.send_welcome_email, **RETRY)
def send_welcome_email(doctor_id: int) -> dict:
    return _welcome(doctor_id)


@implements(app, contract.send_onboarding_email, **RETRY)
def send_onboarding_email(data: dict) -> dict:
    outcome = _welcome(int(data["doctor_id"]))
    return {**data, "email_sent": outcome["status"] in ("sent", "already_sent")}


@implements(app, contract.send_appointment_reminder, **RETRY)
def send_appointment_reminder(appointment_id: int) -> dict:
    try:
        appt = Appointment.objects.select_related("doctor", "patient").get(pk=appointment_id)
    except Appointment.DoesNotExist:
        return {"appointment_id": appointment_id, "status": "skipped", "reason": "appointment not found"}
    sent = send_once(
        f"reminder:appointment:{appt.pk}",
        subject="Appointment reminder",
        body=(
            f"Dear {appt.patient.name}, this is a reminder of your appointment with "
            f"Dr. {appt.doctor.last_name} on {appt.scheduled_at:%Y-%m-%d at %H:%M} UTC."
        ),
        to=[appt.patient.email],
    )
    if sent:
        Appointment.objects.filter(pk=appt.pk).update(reminder_sent_at=timezone.now())
    return {"appointment_id": appointment_id, "status": "sent" if sent else "already_sent"}


@implements(app, contract.send_daily_reminders)
def send_daily_reminders() -> dict:
    now = timezone.now()
    due = Appointment.objects.filter(
        scheduled_at__gte=now, scheduled_at__lt=now + timedelta(days=1), reminder_sent_at__isnull=True
    ).values_list("pk", flat=True)
    ids = list(due)
    calls.send_many(contract.send_appointment_reminder, [(i,) for i in ids])  # pipelined batches
    return {"status": "queued", "reminders": len(ids)}


@implements(app, contract.notify_admin, **RETRY)
def notify_admin(data: int | dict | list) -> dict:
    items = data if isinstance(data, list) else [data]
    lines = "\n".join(f"- {item}" for item in items)
    mailer.send(
        subject=f"[platform] {len(items)} event(s) for review",
        body=f"The following completed:\n{lines}\n",
        to=[get_mail_settings().admin_email],
    )
    return {"status": "notified", "items": len(items), "admin_notified": True}

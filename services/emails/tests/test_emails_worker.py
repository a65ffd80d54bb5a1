"""The emails service: a real worker sending through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from common.models import Appointment, Doctor, Patient
from contracts import emails
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def worker(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    w.start(["emails"], env={"emails": {**peers_env, "ADMIN_EMAIL": "ops@clinic.example"}})
    yield w
    w.stop()


def mail_to(smtp_sink, address: str) -> list:
    return [m for m in smtp_sink.messages if m["To"] == address]


def test_redelivered_welcome_email_is_sent_once(worker: Workers, smtp_sink) -> None:
    doctor = Doctor.objects.create(first_name="Ada", last_name="Lovelace", email="ada.mail@clinic.example")
    first = emails.send_welcome_email.delay(doctor.pk).get(timeout=30)
    duplicates = [emails.send_welcome_email.delay(doctor.pk) for _ in range(4)]  # concurrent redeliveries
    outcomes = [r.get(timeout=60)["status"] for r in duplicates]
    assert first == {"doctor_id": doctor.pk, "status": "sent"}
    assert outcomes == ["already_sent"] * 4
    [message] = mail_to(smtp_sink, "ada.mail@clinic.example")
    assert message["Subject"] == "Welcome to our platform"
    assert "Welcome Dr. Ada!" in message.get_payload()


def test_concurrent_first_deliveries_send_one_email(worker: Workers, smtp_sink) -> None:
    doctor = Doctor.objects.create(first_name="Bo", last_name="Race", email="bo.race@clinic.example")
    results = [emails.send_welcome_email.delay(doctor.pk) for _ in range(5)]
    statuses = sorted(r.get(timeout=60)["status"] for r in results)
    assert statuses == ["already_sent"] * 4 + ["sent"]
    assert len(mail_to(smtp_sink, "bo.race@clinic.example")) == 1


def test_daily_reminders_send_one_per_appointment_due(worker: Workers, smtp_sink) -> None:
    doctor = Doctor.objects.create(first_name="Cy", last_name="Remind", email="cy@clinic.example")
    now = datetime.now(UTC)

    def appointment(email: str, at: datetime) -> Appointment:
        patient = Patient.objects.create(name="Pat Due", email=email, gateway_customer_id="cus_ok")
        return Appointment.objects.create(doctor=doctor, patient=patient, scheduled_at=at, amount=Decimal(50))

    due = appointment("due@mail.example", now + timedelta(hours=3))
    appointment("later@mail.example", now + timedelta(days=3))
    done = appointment("done@mail.example", now + timedelta(hours=5))
    Appointment.objects.filter(pk=done.pk).update(reminder_sent_at=now)

    assert emails.send_daily_reminders.delay().get(timeout=30) == {"status": "queued", "reminders": 1}
    emails.send_daily_reminders.delay().get(timeout=30)  # the job running twice sends nothing twice
    deadline = time.monotonic() + 30
    while not mail_to(smtp_sink, "due@mail.example") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    [reminder] = mail_to(smtp_sink, "due@mail.example")
    assert reminder["Subject"] == "Appointment reminder"
    assert "Dr. Remind" in reminder.get_payload()
    assert not mail_to(smtp_sink, "later@mail.example") and not mail_to(smtp_sink, "done@mail.example")
    due.refresh_from_db()
    assert due.reminder_sent_at is not None


def test_notify_admin_mails_the_admin_with_every_item(worker: Workers, smtp_sink) -> None:
    before = len(mail_to(smtp_sink, "ops@clinic.example"))
    out = emails.notify_admin.delay([{"doctor_id": 1, "valid": True}, {"doctor_id": 2, "valid": False}])
    assert out.get(timeout=30) == {"status": "notified", "items": 2, "admin_notified": True}
    message = mail_to(smtp_sink, "ops@clinic.example")[before]
    assert message["Subject"] == "[platform] 2 event(s) for review"
    assert "'doctor_id': 2, 'valid': False" in message.get_payload()

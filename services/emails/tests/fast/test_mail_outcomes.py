"""The emails service's tasks as they end in production: each mail sent once, retried on SMTP errors.

Mail goes to Django's locmem backend (the SMTP edge); a flaky SMTP server is a mail backend
that raises as smtplib would. The ledger, the lock and the retries are the real ones.
"""

from __future__ import annotations

import smtplib
from datetime import timedelta

import pytest
from django.core.mail.backends.locmem import EmailBackend
from django.test import override_settings
from django.utils import timezone

from common.models import Appointment, Doctor, Patient, SentEmail
from contracts import emails

FAILURES = {"left": 0}


class FlakySMTP(EmailBackend):
    """locmem, except that the next FAILURES["left"] sends fail as an SMTP server's would."""

    def send_messages(self, messages):
        if FAILURES["left"] > 0:
            FAILURES["left"] -= 1
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(messages)


@pytest.fixture
def flaky_smtp(mailbox):
    FAILURES["left"] = 0
    with override_settings(EMAIL_BACKEND=f"{__name__}.FlakySMTP"):
        yield FAILURES


def doctor(n=1, **fields):
    values = {"first_name": "Grace", "last_name": f"Hopper{n}", "email": f"grace{n}@clinic.example", **fields}
    return Doctor.objects.create(**values)


def appointment(hours=3, **fields):
    d = doctor(Doctor.objects.count() + 1)
    p = Patient.objects.create(name="Pat", email=f"pat{d.pk}@mail.example", gateway_customer_id="cus_ok")
    return Appointment.objects.create(
        doctor=d, patient=p, scheduled_at=timezone.now() + timedelta(hours=hours), **fields
    )


def test_sending_the_welcome_email_sends_one_mail_to_the_doctor(jobs, mailbox):
    d = doctor()
    emails.send_welcome_email.delay(d.pk)
    assert jobs.queued == [("emails.send_welcome_email", [d.pk], {})]
    jobs.run_all()
    (mail,) = mailbox
    assert mail.to == [d.email]
    assert mail.subject == "Welcome to our platform"
    assert "Grace" in mail.body
    assert jobs.outcome("emails.send_welcome_email").result == {"doctor_id": d.pk, "status": "sent"}


def test_the_welcome_email_is_sent_once_however_often_it_is_delivered(jobs, mailbox):
    d = doctor()
    emails.send_welcome_email.delay(d.pk)
    emails.send_welcome_email.delay(d.pk)
    outcomes = jobs.run_all()
    assert [o.result["status"] for o in outcomes] == ["sent", "already_sent"]
    assert len(mailbox) == 1
    assert SentEmail.objects.get(key=f"welcome:doctor:{d.pk}").sent_at is not None


def test_a_welcome_for_a_doctor_that_does_not_exist_is_skipped(jobs, mailbox):
    emails.send_welcome_email.delay(999)
    jobs.run_all()
    assert jobs.outcome("emails.send_welcome_email").result["status"] == "skipped"
    assert mailbox == []


def test_an_smtp_error_is_retried_and_the_mail_then_sent_once(jobs, flaky_smtp):
    from django.core import mail

    d = doctor()
    flaky_smtp["left"] = 2
    emails.send_welcome_email.delay(d.pk)
    jobs.run_all()
    outcome = jobs.outcome("emails.send_welcome_email")
    assert (outcome.state, outcome.retries) == ("SUCCESS", 2)
    assert len(mail.outbox) == 1


def test_a_mail_server_that_stays_down_ends_in_a_dead_letter_after_five_retries(jobs, flaky_smtp):
    d = doctor()
    flaky_smtp["left"] = 100
    result = emails.send_welcome_email.delay(d.pk)
    jobs.run_all()
    outcome = jobs.outcome(result.id)
    assert (outcome.state, outcome.retries) == ("FAILURE", 5)
    assert len(jobs.ran) == 6
    (letter,) = jobs.dead_letters
    assert (letter.task, letter.task_id, letter.reason) == ("emails.send_welcome_email", result.id, "failed")
    assert "after 5 retries" in letter.detail
    assert SentEmail.objects.get(key=f"welcome:doctor:{d.pk}").sent_at is None  # still owed


def test_a_mail_another_worker_is_sending_is_retried_not_sent_twice(jobs, mailbox):
    d = doctor()
    jobs.redis.set(f"lock:mail:welcome:doctor:{d.pk}", "another-worker", nx=True)
    emails.send_welcome_email.delay(d.pk)
    jobs.run_next()
    assert jobs.outcome("emails.send_welcome_email").state == "RETRY"
    assert mailbox == []
    jobs.redis.delete(f"lock:mail:welcome:doctor:{d.pk}")  # the other worker finished
    jobs.run_all()
    assert jobs.outcome("emails.send_welcome_email").state == "SUCCESS"
    assert len(mailbox) == 1


def test_the_onboarding_step_welcomes_the_doctor_and_passes_the_record_on(jobs, mailbox):
    d = doctor()
    emails.send_onboarding_email.delay({"doctor_id": d.pk, "valid": True, "account_created": True})
    jobs.run_all()
    assert jobs.outcome("emails.send_onboarding_email").result == {
        "doctor_id": d.pk,
        "valid": True,
        "account_created": True,
        "email_sent": True,
    }
    assert len(mailbox) == 1


def test_a_reminder_names_the_appointment_and_is_recorded(jobs, mailbox):
    appt = appointment()
    emails.send_appointment_reminder.delay(appt.pk)
    jobs.run_all()
    (mail,) = mailbox
    assert mail.to == [appt.patient.email]
    assert f"Dr. {appt.doctor.last_name}" in mail.body
    appt.refresh_from_db()
    assert appt.reminder_sent_at is not None


def test_a_reminder_is_sent_once(jobs, mailbox):
    appt = appointment()
    emails.send_appointment_reminder.delay(appt.pk)
    emails.send_appointment_reminder.delay(appt.pk)
    jobs.run_all()
    assert len(mailbox) == 1


def test_the_daily_job_reminds_each_appointment_of_the_next_day_once(jobs, mailbox):
    due = [appointment(hours=2), appointment(hours=20)]
    appointment(hours=30)  # not due yet
    appointment(hours=-2)  # past
    reminded = appointment(hours=5, reminder_sent_at=timezone.now())
    emails.send_daily_reminders.delay()
    outcomes = jobs.run_all()
    assert outcomes[0].result == {"status": "queued", "reminders": 2}
    assert sorted(o.result["appointment_id"] for o in outcomes[1:]) == sorted(a.pk for a in due)
    assert sorted(m.to[0] for m in mailbox) == sorted(a.patient.email for a in due)
    assert reminded.patient.email not in [m.to[0] for m in mailbox]
    # Run again the same day: nothing is due any more.
    emails.send_daily_reminders.delay()
    assert jobs.run_all()[0].result["reminders"] == 0
    assert len(mailbox) == 2


@pytest.mark.parametrize(
    ("data", "items"), [(7, 1), ({"event": "doctor_created", "doctor_id": 7}, 1), ([1, {"report_id": 2}], 2)]
)
def test_the_admin_is_told_in_one_mail(jobs, mailbox, data, items):
    from emails.config import get_mail_settings

    emails.notify_admin.delay(data)
    jobs.run_all()
    assert jobs.outcome("emails.notify_admin").result == {
        "status": "notified",
        "items": items,
        "admin_notified": True,
    }
    (mail,) = mailbox
    assert mail.to == [get_mail_settings().admin_email]
    assert mail.from_email == get_mail_settings().default_from_email
    assert mail.subject == f"[platform] {items} event(s) for review"

"""docs/testing.md's worked example ("Writing a fast test for your own task"), kept passing."""

from django.db import transaction

from common.models import Doctor
from contracts import emails


def test_saving_a_doctor_queues_the_welcome_and_running_it_sends_one_mail(jobs, mailbox):
    with transaction.atomic():
        doctor = Doctor.objects.create(first_name="Ada", last_name="L", email="ada@clinic.example")
        emails.send_welcome_email.delay(doctor.pk)
        assert jobs.queued == []  # kept in the outbox until the commit
    assert jobs.queued == [("emails.send_welcome_email", [doctor.pk], {})]

    jobs.run_all()

    assert jobs.outcome("emails.send_welcome_email").result == {"doctor_id": doctor.pk, "status": "sent"}
    assert [m.to for m in mailbox] == [["ada@clinic.example"]]

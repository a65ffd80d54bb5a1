"""The web side produces work as the user's guide says, tested in-process with the stub broker.

"Saving this doctor queued emails.send_welcome_email(42); running it sent one mail."
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone

from common.models import Appointment, Doctor, Patient

pytestmark = pytest.mark.skipif(
    "not __import__('importlib').util.find_spec('web')", reason="the web side is not in this sandbox"
)


def new_doctor(n=1):
    return Doctor.objects.create(first_name="Ada", last_name=f"L{n}", email=f"ada{n}@clinic.example")


def test_saving_a_doctor_queues_the_welcome_and_the_crm_sync_and_running_them_sends_one_mail(
    jobs, mailbox, crm
):
    from web.events import producing

    with producing():
        doctor = new_doctor()
    assert jobs.queued == [
        ("emails.send_welcome_email", [doctor.pk], {}),
        ("sync.sync_doctor_to_external_system", [doctor.pk], {}),
    ]
    jobs.run_all()
    assert [o.state for o in jobs.outcomes] == ["SUCCESS", "SUCCESS"]
    assert [m.to for m in mailbox] == [[doctor.email]]
    doctor.refresh_from_db()
    assert doctor.external_id == f"crm-{doctor.pk}"


def test_a_later_save_of_the_same_doctor_sends_nothing(jobs):
    from web.events import producing

    with producing():
        doctor = new_doctor()
        jobs.clear()
        doctor.specialty = "cardiology"
        doctor.save()
    assert jobs.queued == []


def test_a_doctor_created_outside_a_request_or_producing_sends_nothing(jobs):
    new_doctor()
    assert jobs.queued == []


def test_a_doctor_saved_in_a_transaction_that_rolls_back_sends_nothing(jobs, mailbox):
    from web.events import producing

    with producing(), pytest.raises(RuntimeError), transaction.atomic():
        new_doctor()
        raise RuntimeError("the admin's save failed")
    assert jobs.queued == []
    assert jobs.run_all() == []
    assert mailbox == []
    assert not Doctor.objects.exists()


def test_booking_an_appointment_with_an_amount_queues_its_payment(jobs, gateway):
    from web.events import producing

    doctor = new_doctor()
    patient = Patient.objects.create(name="Pat", email="pat@mail.example", gateway_customer_id="cus_ok")
    with producing(), transaction.atomic():
        appt = Appointment.objects.create(
            doctor=doctor,
            patient=patient,
            amount=Decimal("30.00"),
            currency="EUR",
            scheduled_at=timezone.now() + timedelta(days=1),
        )
        free = Appointment.objects.create(doctor=doctor, patient=patient, scheduled_at=timezone.now())
    assert jobs.queued == [("payments.process_payment", [appt.pk], {})]
    jobs.run_all()
    appt.refresh_from_db()
    free.refresh_from_db()
    assert appt.is_paid and not free.is_paid
    assert len(gateway.charge_calls()) == 1


def test_adding_a_doctor_in_the_admin_queues_its_tasks_after_the_save_commits(jobs, mailbox, crm):
    from django.contrib.auth.models import User
    from django.test import Client, override_settings

    client = Client()

    admin = User.objects.create_superuser("op", "op@example.com", "a-long-password-1")
    client.force_login(admin)
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        response = client.post(
            "/admin/common/doctor/add/",
            {"first_name": "Grace", "last_name": "Hopper", "email": "grace@clinic.example", "specialty": ""},
        )
    assert response.status_code == 302, response.content[:500]
    doctor = Doctor.objects.get(email="grace@clinic.example")
    assert jobs.queued == [
        ("emails.send_welcome_email", [doctor.pk], {}),
        ("sync.sync_doctor_to_external_system", [doctor.pk], {}),
    ]
    assert all(m.headers.get("x_outbox") for m in jobs.messages)  # kept in the save's transaction
    jobs.run_all()
    assert len(mailbox) == 1

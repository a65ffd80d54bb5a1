"""The web side produces the work: admin saves and actions send tasks that real workers run.

Real worker processes of every service, the real SMTP sink, CRM and gateway sandboxes; the
admin through Django's test client (the same middleware and transactions as gunicorn).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client
from django.utils import timezone

from common.models import Appointment, Doctor, Patient, Payment, Report, ReportItem
from common.outbox.models import OutboxMessage
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers
from web import events
from web.admin import DoctorAdmin

SERVICES = ["emails", "sync", "payments", "reports"]
SETTLE = 2.0  # seconds to let a duplicate (there must be none) reach a worker and its peer


pytestmark = pytest.mark.usefixtures("django_test_environment")


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    env = {s: dict(peers_env) for s in SERVICES}
    env["reports"]["REPORT_PROGRESS_INTERVAL"] = "0.05"  # many PROGRESS steps for the poll to see
    try:
        w.start(SERVICES, env=env)
        yield w
    finally:
        w.stop()


@pytest.fixture
def operator() -> Client:
    user = get_user_model().objects.create_superuser(
        f"op-{uuid.uuid4().hex[:8]}", f"op-{uuid.uuid4().hex[:8]}@example.com", "x"
    )
    client = Client()
    client.force_login(user)
    return client


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def mails_to(smtp_sink, address: str) -> list:
    return [m for m in smtp_sink.messages if address in m["X-Envelope-To"]]


def add_doctor(client: Client, email: str, **extra: str):
    data = {"first_name": "Grace", "last_name": "Hopper", "email": email, "specialty": "", **extra}
    return client.post("/admin/common/doctor/add/", data)


def test_a_doctor_created_in_the_admin_gets_one_welcome_mail_and_one_crm_upsert(
    operator: Client,
    workers: Workers,
    smtp_sink,
    crm_sandbox,
) -> None:
    email = f"grace-{uuid.uuid4().hex[:6]}@clinic.example"
    response = add_doctor(operator, email)
    assert response.status_code == 302, response.content[:2000]
    doctor = Doctor.objects.get(email=email)

    wait_until(lambda: mails_to(smtp_sink, email) and str(doctor.pk) in crm_sandbox.doctors, timeout=60)
    wait_until(lambda: Doctor.objects.get(pk=doctor.pk).external_id != "", timeout=30)
    time.sleep(SETTLE)
    assert len(mails_to(smtp_sink, email)) == 1
    assert crm_sandbox.doctors[str(doctor.pk)]["writes"] == 1
    assert not OutboxMessage.objects.filter(args=[doctor.pk]).exists()  # published, not stuck

    # A later save is no creation: nothing more is sent.
    data = {"first_name": "Grace", "last_name": "Hopper", "email": email, "specialty": "Cardiology"}
    assert operator.post(f"/admin/common/doctor/{doctor.pk}/change/", data).status_code == 302
    # "Send welcome email" again: refused, the doctor has been welcomed.
    again = operator.post(
        "/admin/common/doctor/",
        {"action": "send_welcome_email", "_selected_action": [doctor.pk]},
        follow=True,
    )
    assert any("already welcomed" in m for m in messages_of(again)), messages_of(again)
    # "Sync to CRM now": queued with its task id, an upsert of the same record.
    synced = operator.post(
        "/admin/common/doctor/", {"action": "sync_to_crm", "_selected_action": [doctor.pk]}, follow=True
    )
    [queued] = [m for m in messages_of(synced) if m.startswith("Queued 1 CRM sync")]
    assert re.search(r"\(task [0-9a-f-]{36}\)", queued), queued
    wait_until(lambda: crm_sandbox.doctors[str(doctor.pk)]["writes"] == 2, timeout=30)
    time.sleep(SETTLE)
    assert len(mails_to(smtp_sink, email)) == 1
    assert crm_sandbox.doctors[str(doctor.pk)]["writes"] == 2
    assert [r for r, d in crm_sandbox.doctors.items() if d["email"] == email] == [str(doctor.pk)]


def test_a_rolled_back_admin_save_sends_nothing(
    operator: Client,
    workers: Workers,
    smtp_sink,
    crm_sandbox,
    monkeypatch,
) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("the save fails after the doctor's row was written")

    monkeypatch.setattr(DoctorAdmin, "save_related", fail)
    lost = f"lost-{uuid.uuid4().hex[:6]}@clinic.example"
    outbox_before = OutboxMessage.objects.count()
    with pytest.raises(RuntimeError, match="save fails"):
        add_doctor(operator, lost)
    assert not Doctor.objects.filter(email=lost).exists()
    assert OutboxMessage.objects.count() == outbox_before
    # In code, too: a rollback inside producing() sends nothing.
    with pytest.raises(ZeroDivisionError), events.producing(), transaction.atomic():
        Doctor.objects.create(first_name="Never", last_name="Was", email=f"x-{lost}")
        1 / 0  # noqa: B018
    monkeypatch.undo()

    # A doctor created after the failed ones is welcomed: had those sent, their mail came first.
    kept = f"kept-{uuid.uuid4().hex[:6]}@clinic.example"
    assert add_doctor(operator, kept).status_code == 302
    wait_until(lambda: mails_to(smtp_sink, kept), timeout=60)
    time.sleep(SETTLE)
    assert not mails_to(smtp_sink, lost) and not mails_to(smtp_sink, f"x-{lost}")
    assert all(d["email"] not in (lost, f"x-{lost}") for d in crm_sandbox.doctors.values())


def test_a_doctor_created_outside_a_request_sends_nothing(smtp_sink) -> None:
    """Workers, tests and the relay load these models too: only the web side's requests produce."""
    outbox_before = OutboxMessage.objects.count()
    with transaction.atomic():
        Doctor.objects.create(
            first_name="Quiet", last_name="Row", email=f"quiet-{uuid.uuid4().hex[:6]}@c.example"
        )
    assert OutboxMessage.objects.count() == outbox_before


def booked(amount: str = "80.00", customer: str = "cus_ok") -> Appointment:
    doctor = Doctor.objects.create(
        first_name="Pay", last_name="Me", email=f"pay-{uuid.uuid4().hex[:6]}@c.example"
    )
    patient = Patient.objects.create(name="Pat", email="pat@mail.example", gateway_customer_id=customer)
    return Appointment.objects.create(
        doctor=doctor, patient=patient, scheduled_at=timezone.now(), amount=Decimal(amount), currency="EUR"
    )


def charge(client: Client, appt: Appointment) -> list[str]:
    response = client.post(
        "/admin/common/appointment/", {"action": "charge_now", "_selected_action": [appt.pk]}, follow=True
    )
    assert response.status_code == 200
    return messages_of(response)


def charges_for(gateway_sandbox, appt: Appointment) -> list[dict]:
    prefix = f"appointment-{appt.pk}-"
    return [c for c in gateway_sandbox.charges if c["idempotency_key"].startswith(prefix)]


def test_charge_now_pressed_twice_charges_once(operator: Client, workers: Workers, gateway_sandbox) -> None:
    gateway_sandbox.latency = 0.5  # the second press lands while the first charge is under way
    appt = booked()
    first, second = charge(operator, appt), charge(operator, appt)
    assert any(m.startswith("Queued 1 charge(s)") for m in first), first
    assert any(m.startswith("Queued 1 charge(s)") or "already paid" in m for m in second), second
    wait_until(lambda: Appointment.objects.get(pk=appt.pk).is_paid, timeout=60)
    time.sleep(SETTLE)
    assert len(charges_for(gateway_sandbox, appt)) == 1
    assert Payment.objects.get(appointment=appt).status == Payment.Status.SUCCEEDED

    third = charge(operator, appt)
    assert any("Refused 1" in m and "already paid" in m for m in third), third
    time.sleep(SETTLE)
    assert len(charges_for(gateway_sandbox, appt)) == 1


def test_charge_now_refuses_an_appointment_without_an_amount(operator: Client) -> None:
    appt = booked(amount="0")
    refused = charge(operator, appt)
    assert any("amount must be greater than 0" in m for m in refused), refused
    assert not Payment.objects.filter(appointment=appt).exists()


def test_an_appointment_booked_in_the_admin_is_charged_once(
    operator: Client,
    workers: Workers,
    gateway_sandbox,
) -> None:
    template = booked()
    data = {
        "doctor": template.doctor_id,
        "patient": template.patient_id,
        "scheduled_at_0": "2030-01-02",
        "scheduled_at_1": "10:00:00",
        "amount": "120.00",
        "currency": "EUR",
        "payment_status": "pending",
        "payment_id": "",
        "reminder_sent_at_0": "",
        "reminder_sent_at_1": "",
    }
    response = operator.post("/admin/common/appointment/add/", data)
    assert response.status_code == 302, response.content[:3000]
    appt = Appointment.objects.exclude(pk=template.pk).get(patient=template.patient)
    wait_until(lambda: Appointment.objects.get(pk=appt.pk).is_paid, timeout=60)
    time.sleep(SETTLE)
    assert [c["amount"] for c in charges_for(gateway_sandbox, appt)] == ["120.00"]
    assert charges_for(gateway_sandbox, template) == []  # created outside a request: not charged


def report_with_items(n: int) -> Report:
    report = Report.objects.create(name=f"Revenue {uuid.uuid4().hex[:6]}")
    ReportItem.objects.bulk_create(
        (ReportItem(report=report, label=f"item {i}", value=Decimal("1.50")) for i in range(n)),
        batch_size=5000,
    )
    return report


def test_generate_report_shows_progress_then_a_download_for_staff_only(
    operator: Client, workers: Workers
) -> None:
    report = report_with_items(150_000)
    change = operator.get(f"/admin/common/report/{report.pk}/change/")
    progress_url = f"/admin/common/report/{report.pk}/progress/"
    assert progress_url in change.content.decode()  # the page polls it

    response = operator.post(
        "/admin/common/report/", {"action": "generate_report", "_selected_action": [report.pk]}, follow=True
    )
    [queued] = [m for m in messages_of(response) if m.startswith("Queued 1 report(s)")]
    report.refresh_from_db()
    assert report.task_id and report.task_id in queued

    seen: list[int] = []
    deadline = time.monotonic() + 120
    while True:
        body = operator.get(progress_url).json()
        seen.append(body["percent"])
        if body["finished"]:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert body["status"] == "complete" and body["percent"] == 100, body
    assert seen == sorted(seen), seen  # never goes back
    assert any(0 < p < 100 for p in seen), f"no intermediate progress seen: {sorted(set(seen))}"

    download_url = body["download_url"]
    assert download_url == f"/admin/common/report/{report.pk}/download/"
    got = operator.get(download_url)
    assert got.status_code == 200 and got["Content-Disposition"].startswith("attachment")
    content = b"".join(got.streaming_content).decode()
    assert content.startswith("item,label,value") and content.rstrip().endswith("225000.00")

    anonymous = Client()
    for url in (download_url, progress_url):
        refused = anonymous.get(url)
        assert refused.status_code == 302 and "/admin/login/" in refused["Location"], url
    not_staff = Client()
    not_staff.force_login(get_user_model().objects.create_user(f"u-{uuid.uuid4().hex[:6]}", password="x"))
    assert not_staff.get(download_url).status_code == 302  # admin_view: staff only


def test_generate_report_refuses_a_report_already_running(operator: Client) -> None:
    running = Report.objects.create(name="Busy", status=Report.Status.RUNNING, task_id=str(uuid.uuid4()))
    from common.celery_app import current_app

    current_app().backend.store_result(running.task_id, None, "PROGRESS")
    response = operator.post(
        "/admin/common/report/", {"action": "generate_report", "_selected_action": [running.pk]}, follow=True
    )
    assert any("Refused 1" in m and "already running" in m for m in messages_of(response)), messages_of(
        response
    )


def test_a_report_file_outside_reports_dir_is_never_served(operator: Client, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("no")
    report = Report.objects.create(name="Odd", status=Report.Status.COMPLETE, file_path=str(secret))
    assert operator.get(f"/admin/common/report/{report.pk}/download/").status_code == 404
    assert operator.get(f"/admin/common/report/{report.pk}/progress/").json()["download_url"] is None

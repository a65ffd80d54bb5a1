"""Admin actions that send work need their permission, not just a staff account.

Through Django's test client, with the contracts' sender replaced by a recorder: what an
action would publish is recorded, nothing reaches a queue. A user who may see a list but
lacks the action's permission does not get the action offered, and a POST of it anyway
runs nothing; with the permission it runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

import common.calls
from common.models import Appointment, Doctor, Patient, Payment, Report
from contracts.declare import bind_sender

pytestmark = pytest.mark.usefixtures("django_test_environment")


class Recorder:
    """Stands in for common.calls: records (task, args) instead of publishing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    def apply_async(self, name: Any, args: Any, kwargs: Any, **options: Any) -> Any:
        self.sent.append((name.name, tuple(args)))
        return SimpleNamespace(id=str(uuid.uuid4()))

    def signature(self, name: Any, args: Any, kwargs: Any, **options: Any) -> Any:
        raise AssertionError("no action builds a canvas")


@pytest.fixture
def sent() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    recorder = Recorder()
    bind_sender(recorder)
    try:
        yield recorder.sent
    finally:
        bind_sender(common.calls)


def client_with(*permissions: str) -> Client:
    """A staff user holding exactly `permissions` ("app_label.codename"), logged in."""
    user = get_user_model().objects.create_user(f"op-{uuid.uuid4().hex[:8]}", password="x", is_staff=True)
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client()
    client.force_login(user)
    return client


def run_action(client: Client, model: str, action: str, pk: int) -> tuple[int, list[str]]:
    response = client.post(
        f"/admin/common/{model}/", {"action": action, "_selected_action": [pk]}, follow=True
    )
    shown = [str(m) for m in response.context["messages"]] if response.context else []
    return response.status_code, shown


def offered(client: Client, model: str) -> set[str]:
    response = client.get(f"/admin/common/{model}/")
    assert response.status_code == 200
    form = response.context["action_form"]  # None: no action at all for this user
    if form is None:
        return set()
    return {name for name, _label in form.fields["action"].choices if name}


def an_appointment() -> Appointment:
    doctor = Doctor.objects.create(
        first_name="Pay", last_name="Me", email=f"p-{uuid.uuid4().hex[:6]}@c.example"
    )
    patient = Patient.objects.create(name="Pat", email="pat@mail.example", gateway_customer_id="cus_ok")
    return Appointment.objects.create(
        doctor=doctor, patient=patient, scheduled_at=timezone.now(), amount=Decimal("80.00"), currency="EUR"
    )


def test_a_staff_user_without_permissions_runs_no_action(sent: list) -> None:
    appointment, report = an_appointment(), Report.objects.create(name=f"r-{uuid.uuid4().hex[:6]}")
    nobody = client_with()
    for model, action, pk in (
        ("appointment", "charge_now", appointment.pk),
        ("doctor", "send_welcome_email", appointment.doctor_id),
        ("doctor", "sync_to_crm", appointment.doctor_id),
        ("report", "generate_report", report.pk),
        ("report", "cancel_report", report.pk),
    ):
        status, _ = run_action(nobody, model, action, pk)
        assert status == 403, (action, status)
    assert sent == []


def test_charge_now_needs_the_charge_permission(sent: list) -> None:
    appointment = an_appointment()
    # May read and edit appointments, may not ask the gateway for money.
    clerk = client_with("common.view_appointment", "common.change_appointment")
    assert "charge_now" not in offered(clerk, "appointment")
    for _ in range(3):  # pressed again and again
        status, shown = run_action(clerk, "appointment", "charge_now", appointment.pk)
        assert status == 200 and not any("Queued" in m for m in shown), shown
    assert sent == [] and not Payment.objects.filter(appointment=appointment).exists()

    cashier = client_with("common.view_appointment", "web.charge_appointment")
    assert "charge_now" in offered(cashier, "appointment")
    status, shown = run_action(cashier, "appointment", "charge_now", appointment.pk)
    assert any(m.startswith("Queued 1 charge(s)") for m in shown), shown
    assert sent == [("payments.process_payment", (appointment.pk,))]


@pytest.mark.parametrize(
    ("action", "task"),
    [
        ("send_welcome_email", "emails.send_welcome_email"),
        ("sync_to_crm", "sync.sync_doctor_to_external_system"),
    ],
)
def test_doctor_actions_need_change_doctor(sent: list, action: str, task: str) -> None:
    doctor = Doctor.objects.create(first_name="A", last_name="B", email=f"d-{uuid.uuid4().hex[:6]}@c.example")
    reader = client_with("common.view_doctor")
    assert action not in offered(reader, "doctor")
    status, shown = run_action(reader, "doctor", action, doctor.pk)
    assert status == 200 and not any("Queued" in m for m in shown) and sent == []

    editor = client_with("common.view_doctor", "common.change_doctor")
    assert action in offered(editor, "doctor")
    status, shown = run_action(editor, "doctor", action, doctor.pk)
    assert any(m.startswith("Queued 1") for m in shown), shown
    assert sent == [(task, (doctor.pk,))]


def test_generate_report_needs_change_report(sent: list) -> None:
    report = Report.objects.create(name=f"r-{uuid.uuid4().hex[:6]}")
    reader = client_with("common.view_report")
    assert "generate_report" not in offered(reader, "report")
    status, shown = run_action(reader, "report", "generate_report", report.pk)
    assert status == 200 and not any("Queued" in m for m in shown) and sent == []
    assert Report.objects.get(pk=report.pk).task_id == ""

    editor = client_with("common.view_report", "common.change_report")
    status, shown = run_action(editor, "report", "generate_report", report.pk)
    assert any("Queued 1 report(s)" in m for m in shown), shown
    assert sent == [("reports.generate_large_report", (report.pk,))]
    assert Report.objects.get(pk=report.pk).task_id != ""


def test_cancel_report_needs_the_revoke_permission() -> None:
    from common import cancellation

    task_id = str(uuid.uuid4())
    report = Report.objects.create(
        name=f"r-{uuid.uuid4().hex[:6]}", status=Report.Status.PENDING, task_id=task_id
    )
    finished = Report.objects.create(
        name=f"r-{uuid.uuid4().hex[:6]}", status=Report.Status.COMPLETE, task_id="x"
    )
    # May read and rerun reports, may not cancel work.
    editor = client_with("common.view_report", "common.change_report")
    assert "cancel_report" not in offered(editor, "report")
    status, shown = run_action(editor, "report", "cancel_report", report.pk)
    assert status == 200 and not any("Cancelled" in m for m in shown), shown
    assert not cancellation.is_revoked(task_id)
    assert Report.objects.get(pk=report.pk).status == Report.Status.PENDING

    canceller = client_with("common.view_report", "web.revoke_task")
    assert "cancel_report" in offered(canceller, "report")
    status, shown = run_action(canceller, "report", "cancel_report", report.pk)
    assert any(m.startswith("Cancelled 1 report(s)") for m in shown), shown
    assert cancellation.is_revoked(task_id)  # kept in Redis: the worker that takes it drops it
    assert Report.objects.get(pk=report.pk).status == Report.Status.CANCELLED  # it will never start
    status, shown = run_action(canceller, "report", "cancel_report", finished.pk)
    assert any("no task to cancel" in m for m in shown), shown
    assert not cancellation.is_revoked("x")

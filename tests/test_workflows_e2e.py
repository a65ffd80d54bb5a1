"""Canvas across services and Celery's calling options, on real workers of each service."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import chord, group
from celery.exceptions import TaskRevokedError
from celery.exceptions import TimeoutError as ResultTimeout

from common.celery_app import current_app
from common.models import Doctor
from common.routing import SERVICES
from contracts import emails, sync
from devtools.testing.workers import Workers

ADMIN = "ops-workflows@clinic.example"


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    env = {**peers_env, "ADMIN_EMAIL": ADMIN}
    try:
        w.start(SERVICES, env={s: env for s in SERVICES})
        yield w
    finally:
        w.stop()


def new_doctor(tag: str) -> Doctor:
    return Doctor.objects.create(first_name=tag.title(), last_name="Flow", email=f"{tag}@clinic.example")


def mail_to(smtp_sink, address: str) -> list:
    return [m for m in smtp_sink.messages if m["To"] == address]


def test_onboarding_chain_creates_the_crm_account_then_welcomes(workers, smtp_sink, crm_sandbox) -> None:
    doctor = new_doctor("chain")
    flow = (
        sync.validate_doctor.s(doctor.pk)
        | sync.create_account.s()
        | emails.send_onboarding_email.s()
    )
    out = flow.apply_async().get(timeout=60)
    crm_id = crm_sandbox.doctors[str(doctor.pk)]["id"]
    assert out == {
        "doctor_id": doctor.pk,
        "valid": True,
        "problems": [],
        "account_created": True,
        "external_id": crm_id,
        "email_sent": True,
    }
    assert crm_sandbox.doctors[str(doctor.pk)]["email"] == "chain@clinic.example"
    assert len(smtp_sink.wait_for(1) and mail_to(smtp_sink, "chain@clinic.example")) == 1


def test_group_notify_all_runs_both_in_parallel(workers, smtp_sink) -> None:
    doctor = new_doctor("group")
    results = group(
        emails.send_welcome_email.s(doctor.pk), emails.notify_admin.s(doctor.pk)
    ).apply_async()
    welcome, admin = results.get(timeout=60)
    assert welcome == {"doctor_id": doctor.pk, "status": "sent"}
    assert admin["admin_notified"] is True
    assert len(mail_to(smtp_sink, "group@clinic.example")) == 1


def test_chord_notifies_the_admin_once_with_every_result(workers, smtp_sink) -> None:
    doctors = [new_doctor(f"chord{i}") for i in range(3)]
    before = len(mail_to(smtp_sink, ADMIN))
    out = chord(
        (sync.validate_doctor.s(d.pk) for d in doctors), emails.notify_admin.s()
    ).apply_async()
    assert out.get(timeout=60) == {"status": "notified", "items": 3, "admin_notified": True}
    time.sleep(1)
    admin_mail = mail_to(smtp_sink, ADMIN)[before:]
    assert len(admin_mail) == 1
    for d in doctors:
        assert f"'doctor_id': {d.pk}, 'valid': True" in admin_mail[0].get_payload()


def test_delay_and_get_with_timeout(workers) -> None:
    result = sync.validate_doctor.delay(new_doctor("delay").pk)
    assert result.get(timeout=10)["valid"] is True


def test_countdown_and_eta_delay_execution(workers) -> None:
    doctor = new_doctor("later")
    sent = datetime.now(UTC)
    by_countdown = sync.validate_doctor.apply_async(args=[doctor.pk], countdown=2)
    by_eta = sync.validate_doctor.apply_async(args=[doctor.pk], eta=sent + timedelta(seconds=2))
    with pytest.raises(ResultTimeout):
        by_countdown.get(timeout=0.5)
    for result in (by_countdown, by_eta):
        assert result.get(timeout=30)["valid"] is True
        assert (result.date_done - sent).total_seconds() >= 2


def test_expired_task_is_not_run(workers, smtp_sink) -> None:
    doctor = new_doctor("expired")
    result = emails.send_welcome_email.apply_async(args=[doctor.pk], countdown=3, expires=1)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=30)
    assert result.state == "REVOKED"
    assert not mail_to(smtp_sink, "expired@clinic.example")


def test_priority_is_accepted_and_the_task_runs(workers) -> None:
    result = sync.validate_doctor.apply_async(args=[new_doctor("priority").pk], priority=5)
    assert result.get(timeout=30)["valid"] is True


def test_task_failure_is_logged_once_structured_and_without_pii(workers, data_dir: Path) -> None:
    data = {
        "doctor_id": 987654,
        "valid": True,
        "problems": [],
        "email": "secret.person@mail.example",
        "name": "Secret Person",
    }
    # Sent unchecked, as an older or foreign producer could: the contract refuses a name.
    result = current_app().send_task("sync.create_account", args=[data])
    with pytest.raises(Exception, match="Doctor matching query does not exist"):
        result.get(timeout=30)
    time.sleep(1)
    log = (data_dir / "sync-worker.log").read_text()
    records = [line for line in log.splitlines() if f"Task sync.create_account[{result.id}] failed:" in line]
    assert len(records) == 1, log[-3000:]
    assert "'doctor_id': 987654" in records[0] and "'email': '[redacted]'" in records[0]
    assert "secret.person@mail.example" not in log and "Secret Person" not in log

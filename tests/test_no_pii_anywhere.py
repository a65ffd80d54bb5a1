"""A named, emailed doctor and patient, every task run once: neither name nor email is left in
Redis, in any worker's log or in any Sentry event.

The mail itself and the CRM record carry them (that is their job); everything the platform
keeps or reports about the work must not. Every declared task must have a sample call here,
so a new task is scanned too. Runs on PostgreSQL (tests/BUILD): four workers write at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from common.celery_app import current_app
from common.models import Appointment, Doctor, Patient, Report, ReportItem
from common.routing import SERVICES
from contracts.declare import all_contracts
from devtools.sandboxes.sentry import SentrySink
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers
from tests.test_results_without_payloads import every_value

DOCTOR = ("Philippa", "Marchbanks-Oyelaran")
DOCTOR_EMAIL = "philippa.marchbanks@pii-probe.example"
PATIENT = "Ottoline Vandersteen"
PATIENT_EMAIL = "ottoline.vandersteen@pii-probe.example"
SECRETS = (*DOCTOR, DOCTOR_EMAIL, *PATIENT.split(), PATIENT_EMAIL)


@pytest.fixture(scope="module")
def sentry() -> Iterator[SentrySink]:
    with SentrySink() as sink:
        yield sink


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str], sentry: SentrySink) -> Iterator[Workers]:
    w = Workers(data_dir)
    env = {**peers_env, "SENTRY_DSN": sentry.dsn, "SENTRY_TRACES_SAMPLE_RATE": "0"}
    try:
        w.start(SERVICES, env={s: env for s in SERVICES})
        yield w
    finally:
        w.stop()


def samples(doctor: Doctor, appt: Appointment, report: Report) -> dict[str, Callable[[], list]]:
    check = {"doctor_id": doctor.pk, "valid": True, "problems": []}
    return {
        "emails.send_welcome_email": lambda: [doctor.pk],
        "emails.send_onboarding_email": lambda: [{**check, "account_created": True}],
        "emails.send_appointment_reminder": lambda: [appt.pk],
        "emails.send_daily_reminders": lambda: [],
        "emails.notify_admin": lambda: [[doctor.pk, check]],
        "sync.validate_doctor": lambda: [doctor.pk],
        "sync.create_account": lambda: [check],
        "sync.sync_doctor_to_external_system": lambda: [doctor.pk],
        "sync.sync_all_doctors": lambda: [],
        "sync.echo": lambda: [1],
        "sync.probe_unique": lambda: [1, 1],
        "sync.health_check": lambda: [],
        "payments.process_payment": lambda: [appt.pk],
        "payments.reconcile_payments": lambda: [],
        "reports.generate_large_report": lambda: [report.pk],
        "reports.generate_weekly_report": lambda: [],
    }


def test_every_task_leaves_no_name_or_email_behind(
    workers, redis_client, sentry: SentrySink, data_dir: Path, smtp_sink, crm_sandbox, gateway_sandbox
) -> None:
    doctor = Doctor.objects.create(first_name=DOCTOR[0], last_name=DOCTOR[1], email=DOCTOR_EMAIL)
    patient = Patient.objects.create(name=PATIENT, email=PATIENT_EMAIL, gateway_customer_id="cus_ok")
    appt = Appointment.objects.create(
        doctor=doctor,
        patient=patient,
        amount=Decimal(42),
        scheduled_at=datetime.now(UTC) + timedelta(hours=2),
    )
    report = Report.objects.create(name=f"Revenue for {PATIENT}")
    ReportItem.objects.bulk_create(
        ReportItem(report=report, label=PATIENT, value=Decimal(i)) for i in range(50)
    )

    calls = samples(doctor, appt, report)
    declared = {c.name for c in all_contracts()}
    assert declared <= set(calls), f"add a sample call for {sorted(declared - set(calls))}"
    # Reconciliation last: run beside a charge it would find the charge's claim in flight.
    order = sorted(declared, key=lambda n: (n == "payments.reconcile_payments", n))
    results: dict[str, Any] = {}
    for name in order:
        if name == "payments.reconcile_payments":
            wait_until(lambda: all(r.ready() for r in results.values()), timeout=90)
        results[name] = current_app().send_task(name, args=calls[name]())
    # A producer that ignores the contracts (an old release, another language) sends names too:
    # the task fails (no such doctor) and the failure is reported, masked.
    foreign = current_app().send_task(
        "sync.create_account",
        args=[{"doctor_id": 10**9, "valid": True, "problems": [], "name": PATIENT, "email": PATIENT_EMAIL}],
    )
    for result in [*results.values(), foreign]:
        wait_until(result.ready, timeout=90)
    assert foreign.state == "FAILURE"
    failed = {n: f"{r.state}: {r.result!r}" for n, r in results.items() if r.state != "SUCCESS"}
    assert not failed, failed
    assert smtp_sink.wait_for(2) and crm_sandbox.doctors, "the work really ran (mail sent, CRM written)"
    deadline = time.monotonic() + 15
    while not sentry.events and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # the SDK sends from a background thread

    found = []
    for key, value in every_value(redis_client):
        found += [f"redis {key!r}: {s}" for s in SECRETS if s.encode() in value or s.encode() in key]
    for log in sorted(data_dir.glob("*-worker.log")):
        text = log.read_text()
        found += [f"{log.name}: {s}" for s in SECRETS if s in text]
    for envelope in sentry.envelopes:
        text = json.dumps(envelope, default=str)
        found += [f"sentry envelope: {s}" for s in SECRETS if s in text]
    values = sum(1 for _ in every_value(redis_client))
    logs = len(list(data_dir.glob("*-worker.log")))
    print(
        f"\n[pii] {len(results)} tasks and one foreign call ran; scanned {values} Redis values, "
        f"{logs} worker logs, {len(sentry.envelopes)} Sentry envelopes: {len(found)} leak(s)"
    )
    assert sentry.events, "the foreign call's failure reached Sentry"
    assert not found, "\n".join(found)

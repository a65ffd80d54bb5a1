"""The reports service's tasks as they end in production: progress published, a complete file."""

from __future__ import annotations

import csv
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from common.models import Appointment, Doctor, Patient, Report, ReportItem
from contracts import reports


def report_with(values):
    report = Report.objects.create(name="Quarterly")
    ReportItem.objects.bulk_create(
        ReportItem(report=report, label=f"row {i}", value=Decimal(v)) for i, v in enumerate(values)
    )
    return report


def rows(path):
    with Path(path).open(newline="") as fh:
        return list(csv.reader(fh))


def test_a_report_build_writes_every_item_and_the_total(jobs):
    report = report_with(["1.50", "2.25", "3.00"])
    reports.generate_large_report.delay(report.pk)
    jobs.run_all()
    outcome = jobs.outcome("reports.generate_large_report")
    assert outcome.state == "SUCCESS"
    assert outcome.result["processed"] == 3
    lines = rows(outcome.result["file"])
    assert lines[0] == ["item", "label", "value"]
    assert [r[1] for r in lines[1:4]] == ["row 0", "row 1", "row 2"]
    assert lines[-1] == ["total", "", "6.75"]


def test_a_finished_report_is_marked_complete_with_its_file_and_progress(jobs):
    report = report_with(["1"] * 5)
    result = reports.generate_large_report.delay(report.pk)
    jobs.run_all()
    report.refresh_from_db()
    assert report.status == Report.Status.COMPLETE
    assert (report.progress_current, report.progress_total) == (5, 5)
    assert report.task_id == result.id
    assert Path(report.file_path).exists()
    assert report.finished_at is not None
    assert not list(Path(report.file_path).parent.glob("*.part"))  # no half-written file left


def test_progress_is_published_as_the_build_goes(jobs, monkeypatch):
    from celery import current_app

    states = []
    report = report_with(["1"] * 4)
    real = type(current_app.backend).store_result

    def store_result(self, task_id, result, state, *args, **kwargs):
        states.append((state, result if state == "PROGRESS" else None))
        return real(self, task_id, result, state, *args, **kwargs)

    monkeypatch.setattr(type(current_app.backend), "store_result", store_result)
    monkeypatch.setenv("REPORT_PROGRESS_INTERVAL", "0.000001")
    from common.settings import reset_settings_cache

    reset_settings_cache()
    try:
        reports.generate_large_report.delay(report.pk)
        jobs.run_all()
    finally:
        monkeypatch.undo()
        reset_settings_cache()
    progress = [r for s, r in states if s == "PROGRESS"]
    assert progress[0] == {"current": 0, "total": 4}
    assert progress[-1] == {"current": 4, "total": 4}
    assert states[-1][0] == "SUCCESS"


def test_an_empty_report_is_complete_with_a_zero_total(jobs):
    report = report_with([])
    reports.generate_large_report.delay(report.pk)
    jobs.run_all()
    assert rows(jobs.outcome("reports.generate_large_report").result["file"])[-1] == ["total", "", "0"]


def test_a_report_that_does_not_exist_fails(jobs):
    reports.generate_large_report.delay(999)
    jobs.run_all()
    outcome = jobs.outcome("reports.generate_large_report")
    assert outcome.state == "FAILURE"
    assert type(outcome.result).__name__ == "DoesNotExist"


def test_the_weekly_job_builds_the_weeks_appointments_per_doctor(jobs):
    now = timezone.now()
    patient = Patient.objects.create(name="Pat", email="pat@mail.example", gateway_customer_id="cus_ok")
    for n, (days, amount) in enumerate([(1, "10.00"), (2, "5.00"), (10, "99.00")]):
        d = Doctor.objects.create(
            first_name="D", last_name="Who" if n < 2 else "Old", email=f"d{n}@c.example"
        )
        Appointment.objects.create(
            doctor=d, patient=patient, amount=Decimal(amount), scheduled_at=now - timedelta(days=days)
        )
    reports.generate_weekly_report.delay()
    outcomes = jobs.run_all()
    assert [o.task for o in outcomes] == ["reports.generate_weekly_report", "reports.generate_large_report"]
    weekly = outcomes[0].result
    assert weekly["status"] == "queued" and weekly["task_id"] == outcomes[1].id
    report = Report.objects.get(pk=weekly["report_id"])
    assert report.status == Report.Status.COMPLETE
    assert sorted(report.items.values_list("value", flat=True)) == [Decimal("5.00"), Decimal("10.00")]
    assert rows(report.file_path)[-1] == ["total", "", "15.00"]


@pytest.mark.parametrize("n", [1, 250])
def test_every_item_is_written_once(jobs, n):
    report = report_with(["1"] * n)
    reports.generate_large_report.delay(report.pk)
    jobs.run_all()
    lines = rows(jobs.outcome("reports.generate_large_report").result["file"])
    assert len(lines) == n + 2
    assert lines[-1] == ["total", "", f"{n}.00"]


def test_a_report_revoked_while_it_writes_stops_at_its_next_progress_update(jobs, monkeypatch):
    """The revoke lands mid-file (when row 3's progress reaches the database, seen through Django's
    query hook): the build stops there, leaves no partial file, is cancelled and ends REVOKED."""
    from celery.result import AsyncResult
    from django.conf import settings
    from django.db import connection

    from common import cancellation
    from common.settings import reset_settings_cache
    from reports.app import app

    report = report_with(["1"] * 50)
    task_id = reports.generate_large_report.delay(report.pk).id
    out_dir = Path(settings.REPORTS_DIR)
    before = set(out_dir.glob("*")) if out_dir.exists() else set()
    partial_while_writing = []

    def revoke_at_row_3(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "progress_current" in sql and params and params[0] == 3:
            partial_while_writing.append((out_dir / f"report-{report.pk}.csv.part").exists())
            cancellation.revoke([task_id])
        return result

    monkeypatch.setenv("REPORT_PROGRESS_INTERVAL", "0.000001")  # a progress update per row
    reset_settings_cache()
    try:
        with connection.execute_wrapper(revoke_at_row_3):
            jobs.run_all()
    finally:
        monkeypatch.undo()
        reset_settings_cache()

    assert jobs.outcome(task_id).state == "REVOKED"
    assert AsyncResult(task_id, app=app).state == "REVOKED"
    report.refresh_from_db()
    assert report.status == Report.Status.CANCELLED
    assert report.progress_current == 3  # it stopped at the first check after the revoke
    assert report.file_path == "" and report.finished_at is not None
    assert partial_while_writing == [True]  # the revoke came while the partial file was there
    left = set(out_dir.glob("*")) - before
    assert left == set(), f"file left behind: {left}"
    assert jobs.dead_letters == []

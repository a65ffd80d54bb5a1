"""The admin's report task state once the task's result has expired from Redis (RESULT_EXPIRES).

The backend then answers PENDING, as for a task never run; the admin shows the outcome the
report's row recorded, or "expired", instead.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import states
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from common.celery_app import current_app
from common.models import Report
from contracts import reports
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers

LIST = "/admin/common/report/"
RESULT_EXPIRES = 2  # the worker's: its results vanish from Redis 2 s after they are stored


pytestmark = pytest.mark.usefixtures("django_test_environment")


@pytest.fixture(scope="module")
def reports_worker(data_dir: Path) -> Iterator[Workers]:
    w = Workers(data_dir)
    try:
        w.start(["reports"], env={"reports": {"RESULT_EXPIRES": str(RESULT_EXPIRES)}})
        yield w
    finally:
        w.stop()


@pytest.fixture
def operator() -> Client:
    user = get_user_model().objects.create_user(f"op-{uuid.uuid4().hex[:8]}", password="x", is_staff=True)
    user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


def task_state_cell(client: Client, report: Report) -> str:
    """The report's row's "Task state" cell on the admin's list page, as text."""
    response = client.get(LIST, {"id__exact": report.pk})
    assert response.status_code == 200
    text = html.unescape(response.content.decode())
    start = text.index('<td class="field-task_state">') + len('<td class="field-task_state">')
    return text[start : text.index("</td>", start)]


def report(status: str, *, age: timedelta, finished: bool = False, task_id: str | None = None) -> Report:
    created = Report.objects.create(
        name=f"r-{uuid.uuid4().hex[:6]}", status=status, task_id=task_id or str(uuid.uuid4())
    )
    at = timezone.now() - age
    Report.objects.filter(pk=created.pk).update(created_at=at, finished_at=at if finished else None)
    created.refresh_from_db()
    return created


def test_a_finished_reports_expired_result_shows_the_recorded_outcome(
    operator: Client, reports_worker
) -> None:
    built = Report.objects.create(name="Quarterly revenue")
    result = reports.generate_large_report.delay(built.pk)
    assert result.get(timeout=60)["status"] == "complete"
    built.refresh_from_db()
    assert (built.status, built.task_id) == (Report.Status.COMPLETE, result.id)
    assert task_state_cell(operator, built) == states.SUCCESS  # while Redis has the result
    wait_until(lambda: result.backend.get_task_meta(result.id)["status"] == states.PENDING, timeout=30)
    assert task_state_cell(operator, built) == "SUCCESS (recorded; result expired after RESULT_EXPIRES)"
    detail = html.unescape(operator.get(f"{LIST}{built.pk}/change/").content.decode())
    assert "SUCCESS (recorded; result expired after RESULT_EXPIRES)" in detail


def test_a_failed_report_without_its_result_shows_failure(operator: Client) -> None:
    failed = report(Report.Status.FAILED, age=timedelta(days=3), finished=True)
    assert task_state_cell(operator, failed) == "FAILURE (recorded; result expired after RESULT_EXPIRES)"


def test_an_unfinished_report_older_than_result_expires_shows_expired(operator: Client) -> None:
    expires = current_app().conf.result_expires
    older = expires if isinstance(expires, timedelta) else timedelta(seconds=expires)
    stuck = report(Report.Status.RUNNING, age=older + timedelta(minutes=5))
    assert task_state_cell(operator, stuck) == "expired (result gone after RESULT_EXPIRES)"


def test_a_young_report_without_a_result_is_really_pending(operator: Client) -> None:
    queued = report(Report.Status.PENDING, age=timedelta(seconds=5))
    assert task_state_cell(operator, queued) == states.PENDING


def test_a_live_result_wins_over_the_row(operator: Client) -> None:
    running = report(Report.Status.COMPLETE, age=timedelta(days=1), finished=True)
    current_app().backend.store_result(running.task_id, None, states.STARTED)
    assert task_state_cell(operator, running) == states.STARTED

"""The reports service: progress a caller can poll, and a real CSV file at the end."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from common.models import Report, ReportItem
from contracts import reports
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def worker(data_dir: Path) -> Iterator[Workers]:
    w = Workers(data_dir)
    # Frequent updates so a short test sees several; the default (0.5 s) suits real reports.
    w.start(["reports"], env={"reports": {"REPORT_PROGRESS_INTERVAL": "0.05"}})
    yield w
    w.stop()


def make_report(n: int) -> Report:
    report = Report.objects.create(name=f"test report {n}")
    ReportItem.objects.bulk_create(
        (ReportItem(report=report, label=f"item {i}", value=Decimal(i % 10)) for i in range(n)),
        batch_size=5000,
    )
    return report


def test_polling_caller_sees_progress_increase_then_the_result(worker: Workers) -> None:
    report = make_report(150_000)
    result = reports.generate_large_report.delay(report.pk)
    seen: list[int] = []
    while not result.ready():
        # One read of the stored meta: state and info read separately can straddle the
        # switch from PROGRESS to SUCCESS and pair PROGRESS with the final result.
        meta = result.backend.get_task_meta(result.id, cache=False)
        state, info = meta["status"], meta["result"]
        if state == "PROGRESS" and (not seen or info["current"] != seen[-1]):
            assert info["total"] == 150_000
            seen.append(info["current"])
        time.sleep(0.02)
    assert len(seen) >= 3, f"expected several PROGRESS updates, saw {seen}"
    assert seen == sorted(seen), "progress must only go forward"
    assert result.get(timeout=5)["processed"] == 150_000
    assert result.get()["status"] == "complete"


def test_report_is_written_as_a_csv_file_and_recorded(worker: Workers) -> None:
    report = make_report(1000)
    out = reports.generate_large_report.delay(report.pk).get(timeout=60)
    path = Path(out["file"])
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["item", "label", "value"]
    assert len(rows) == 1 + 1000 + 1
    assert rows[-1] == ["total", "", "4500.00"]
    report.refresh_from_db()
    assert (report.status, report.progress_current, report.progress_total) == ("complete", 1000, 1000)
    assert report.file_path == str(path) and report.finished_at is not None


def test_weekly_report_builds_a_report_of_the_last_week(worker: Workers) -> None:
    out = reports.generate_weekly_report.delay().get(timeout=30)
    assert out["status"] == "queued"
    from celery.result import AsyncResult

    from common.celery_app import current_app

    built = AsyncResult(out["task_id"], app=current_app()).get(timeout=60)
    assert built["status"] == "complete"
    assert Report.objects.get(pk=out["report_id"]).name.startswith("Weekly appointments")

"""The reports service's tasks, as declared in `contracts.reports`.

A report build can be cancelled while it runs: at each progress update (every
REPORT_PROGRESS_INTERVAL, 0.5 s) it asks whether it was revoked (`common.cancellation`), and
if so removes its partial file, marks the report cancelled and ends REVOKED.
"""

from __future__ import annotations

import csv
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone

from common import cancellation
from common.celery_app import implements
from common.models import Appointment, Report, ReportItem
from common.settings import get_settings
from contracts import reports as contract
from reports.app import app
from reports.progress import Progress


def _write_csv(report: Report, progress: Progress) -> tuple[Path, int]:
    out_dir = Path(settings.REPORTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"report-{report.pk}.csv"
    tmp = path.with_suffix(".csv.part")
    processed = 0
    total_value = Decimal("0")
    try:
        with tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["item", "label", "value"])
            for item in report.items.order_by("pk").iterator(chunk_size=2000):
                writer.writerow([item.pk, item.label, item.value])
                total_value += item.value
                processed += 1
                progress.update(processed)  # and a stop if revoked (generate_large_report)
            writer.writerow(["total", "", total_value])
    except BaseException:  # revoked, failed or timed out: no half-written file is left behind
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)  # readers never see a half-written file
    return path, processed


@implements(app, contract.generate_large_report, bind=True, track_started=True)
def generate_large_report(self: Any, report_id: int) -> dict:
    report = Report.objects.get(pk=report_id)
    total = report.items.count()
    Report.objects.filter(pk=report_id).update(
        status=Report.Status.RUNNING, task_id=self.request.id or "", progress_total=total, progress_current=0
    )

    def remember(current: int, total: int) -> None:
        Report.objects.filter(pk=report_id).update(progress_current=current)
        cancellation.stop_if_revoked(self)  # between chunks: one EXISTS per progress update

    progress = Progress(self, total, every=get_settings().report_progress_interval, on_publish=remember)
    try:
        progress.publish(0)
        path, processed = _write_csv(report, progress)
    except cancellation.TaskRevoked:  # REVOKED is stored; not a failure
        Report.objects.filter(pk=report_id).update(status=Report.Status.CANCELLED, finished_at=timezone.now())
        raise
    except Exception:
        Report.objects.filter(pk=report_id).update(status=Report.Status.FAILED)
        raise
    Report.objects.filter(pk=report_id).update(
        status=Report.Status.COMPLETE,
        progress_current=processed,
        file_path=str(path),
        finished_at=timezone.now(),
    )
    return {"status": "complete", "processed": processed, "file": str(path)}


@implements(app, contract.generate_weekly_report, track_started=True)
def generate_weekly_report() -> dict:
    end = timezone.now()
    start = end - timedelta(days=7)
    report = Report.objects.create(name=f"Weekly appointments {start:%Y-%m-%d} to {end:%Y-%m-%d}")
    rows = (
        Appointment.objects.filter(scheduled_at__gte=start, scheduled_at__lt=end)
        .values("doctor_id", "doctor__last_name")
        .annotate(n=Count("pk"), revenue=Sum("amount"))
        .order_by("doctor_id")
    )
    ReportItem.objects.bulk_create(
        ReportItem(
            report=report,
            label=f"Dr. {r['doctor__last_name']} ({r['n']} appointments)",
            value=r["revenue"] or 0,
        )
        for r in rows
    )
    result = contract.generate_large_report.delay(report.pk)
    return {"status": "queued", "report_id": report.pk, "task_id": result.id}

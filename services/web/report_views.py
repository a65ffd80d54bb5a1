"""A report's live progress (JSON, polled by its change page) and its finished file, for staff.

Both are mounted by `ReportAdmin.get_urls` behind `admin_site.admin_view`: an anonymous
request is sent to the login page, and a logged-in user needs view permission on reports.

The reports worker keeps the row current as it goes (`progress_current` each time it
publishes PROGRESS, `progress_total`, then `status=complete` and `file_path`), so the row is
all a poll reads: no Redis round trip, and it still answers once the task's result expired.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse

from common.models import Report


def _report(request: HttpRequest, report_id: int) -> Report:
    report = get_object_or_404(Report, pk=report_id)
    model_admin = admin.site._registry.get(Report)
    if model_admin is None or not model_admin.has_view_permission(request, report):
        raise PermissionDenied
    return report


def report_file(report: Report) -> Path | None:
    """The finished report's file, if it exists and lies under REPORTS_DIR (never elsewhere)."""
    if report.status != Report.Status.COMPLETE or not report.file_path:
        return None
    root = Path(settings.REPORTS_DIR).resolve()
    path = Path(report.file_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def progress(request: HttpRequest, report_id: int) -> JsonResponse:
    report = _report(request, report_id)
    total, current = report.progress_total, report.progress_current
    finished = report.status in (Report.Status.COMPLETE, Report.Status.FAILED)
    percent = 100 * current // total if total else (100 if report.status == Report.Status.COMPLETE else 0)
    body = {
        "id": report.pk,
        "status": report.status,
        "current": current,
        "total": total,
        "percent": percent,
        "finished": finished,
        "task_id": report.task_id,
        "download_url": (
            reverse("admin:common_report_download", args=[report.pk]) if report_file(report) else None
        ),
    }
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    return response


def download(request: HttpRequest, report_id: int) -> FileResponse:
    report = _report(request, report_id)
    path = report_file(report)
    if path is None:
        raise Http404("This report has no finished file (yet).")
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name, content_type="text/csv")

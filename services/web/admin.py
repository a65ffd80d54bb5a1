"""Admin over the platform's data; django_celery_beat registers the schedules itself.

Every action that sends work declares the permission it needs (`@admin.action(permissions=...)`):
Django leaves it out of the action menu for a user without it, and refuses a forged POST of
it. Welcome mails and CRM syncs need `change_doctor`, a report run `change_report`, a
charge (a new attempt at the payment gateway) `web.charge_appointment`, and cancelling a
report's task `web.revoke_task` (web/models.py).
"""

from datetime import datetime, timedelta
from typing import Any

import redis
from celery import states
from celery.result import AsyncResult
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from common import (
    calls,  # noqa: F401  (binds the contracts' .delay() to the outbox sender)
    cancellation,
)
from common.models import (
    Appointment,
    Doctor,
    Patient,
    Payment,
    Report,
    SentEmail,
)
from common.outbox.models import OutboxMessage
from contracts import emails, payments, reports, sync
from web import report_views
from web.models import CHARGE_APPOINTMENT, REVOKE_TASK


def queued_message(what: str, queued: list[tuple[str, str]]) -> str:
    """ "Queued 2 welcome emails: Dr. A (task 1f..), Dr. B (task 9c..)." — what the action sent."""
    return format_html(
        "Queued {} {}: {}.",
        len(queued),
        what,
        format_html_join(", ", "{} (task {})", queued),
    )


def refused_message(refused: list[tuple[str, str]]) -> str:
    return format_html("Refused {}: {}.", len(refused), format_html_join("; ", "{}: {}", refused))


@admin.register(Doctor)
class DoctorAdmin(admin.ModelAdmin):
    list_display = ("id", "first_name", "last_name", "email", "specialty", "external_id", "synced_at")
    search_fields = ("last_name", "email")
    actions = ("send_welcome_email", "sync_to_crm")

    @admin.action(description="Send welcome email", permissions=["change"])
    def send_welcome_email(self, request: HttpRequest, queryset: QuerySet[Doctor]) -> None:
        # The emails service sends one welcome per doctor (its ledger, SentEmail), however often
        # it is asked: a doctor already welcomed is told, not mailed again.
        welcomed = set(
            SentEmail.objects.filter(
                key__in=[f"welcome:doctor:{d.pk}" for d in queryset], sent_at__isnull=False
            ).values_list("key", flat=True)
        )
        queued, refused = [], []
        with transaction.atomic():  # published when this commits
            for doctor in queryset:
                if f"welcome:doctor:{doctor.pk}" in welcomed:
                    refused.append((str(doctor), "already welcomed (one welcome email per doctor)"))
                    continue
                queued.append((str(doctor), emails.send_welcome_email.delay(doctor.pk).id))
        if queued:
            self.message_user(request, queued_message("welcome email(s)", queued), messages.SUCCESS)
        if refused:
            self.message_user(request, refused_message(refused), messages.WARNING)

    @admin.action(description="Sync to CRM now", permissions=["change"])
    def sync_to_crm(self, request: HttpRequest, queryset: QuerySet[Doctor]) -> None:
        # The CRM upserts by our reference: a second sync updates the record, never duplicates it.
        with transaction.atomic():
            queued = [(str(d), sync.sync_doctor_to_external_system.delay(d.pk).id) for d in queryset]
        self.message_user(request, queued_message("CRM sync(s)", queued), messages.SUCCESS)


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "email", "gateway_customer_id")


def why_not_charge(appt: Appointment, payment: Payment | None) -> str | None:
    """Why charging `appt` now makes no sense, or None."""
    if appt.is_paid or (payment is not None and payment.status == Payment.Status.SUCCEEDED):
        charge = appt.payment_id or (payment.gateway_payment_id if payment else "")
        return f"already paid ({charge})" if charge else "already paid"
    problems = appt.charge_problems()
    if problems:
        return "cannot be charged: " + "; ".join(problems) + " (fix the appointment first)"
    return None


@admin.register(Appointment)
class AppointmentAdmin(admin.ModelAdmin):
    list_display = ("id", "doctor", "patient", "scheduled_at", "amount", "payment_status", "payment_id")
    list_filter = ("payment_status",)
    actions = ("charge_now",)

    def has_charge_permission(self, request: HttpRequest) -> bool:
        """Asking the gateway for money is its own permission, not "change appointment"."""
        return request.user.has_perm(CHARGE_APPOINTMENT)

    @admin.action(description="Charge now / retry payment", permissions=["charge"])
    def charge_now(self, request: HttpRequest, queryset: QuerySet[Appointment]) -> None:
        # process_payment charges once per idempotency key and leaves a charge in progress alone,
        # so pressing this twice, or while the booking's own charge runs, charges once.
        found = {p.appointment_id: p for p in Payment.objects.filter(appointment__in=queryset)}
        queued, refused = [], []
        with transaction.atomic():
            for appt in queryset:
                payment = found.get(appt.pk)
                problem = why_not_charge(appt, payment)
                if problem is not None:
                    refused.append((str(appt), problem))
                    continue
                label = str(appt) if payment is None else f"{appt} (retry, {payment.status})"
                queued.append((label, payments.process_payment.delay(appt.pk).id))
        if queued:
            self.message_user(request, queued_message("charge(s)", queued), messages.SUCCESS)
        if refused:
            self.message_user(request, refused_message(refused), messages.WARNING)


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = (
        "idempotency_key",
        "appointment",
        "status",
        "amount",
        "currency",
        "attempts",
        "gateway_payment_id",
        "updated_at",
    )
    list_filter = ("status",)
    readonly_fields = ("idempotency_key", "key_number", "gateway_payment_id", "attempts", "last_error")


# A finished report's row is the record once its task result has expired from Redis.
RECORDED_STATE: dict[str, str] = {
    Report.Status.COMPLETE: states.SUCCESS,
    Report.Status.FAILED: states.FAILURE,
    Report.Status.CANCELLED: states.REVOKED,
}
RECORDED = "{state} (recorded; result expired after RESULT_EXPIRES)"
EXPIRED = "expired (result gone after RESULT_EXPIRES)"


def report_task_state(report: Report, backend_state: str, result_expires: timedelta, now: datetime) -> str:
    """What the admin shows for a report's task: the backend's state, unless it can only be stale.

    The result backend forgets a task `result_expires` after its last state (RESULT_EXPIRES),
    and then answers PENDING, as for a task never run. A PENDING for a report the database
    says finished is that: show the recorded outcome. A PENDING for an unfinished report
    older than `result_expires` says nothing either (its record expired, its worker died
    before finishing, or it has waited in a queue that long): "expired". A younger one is
    really waiting.
    """
    if backend_state != states.PENDING:
        return backend_state
    recorded = RECORDED_STATE.get(report.status)
    if recorded is not None:
        return RECORDED.format(state=recorded)
    since = report.finished_at or report.created_at
    if since is not None and now - since > result_expires:
        return EXPIRED
    return backend_state


def _as_timedelta(value: timedelta | float | None) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=value) if value else timedelta.max  # 0/None: results never expire


IN_FLIGHT = (Report.Status.PENDING, Report.Status.RUNNING)


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "progress", "task_state", "finished_at")
    actions = ("generate_report", "cancel_report")
    readonly_fields = (
        "task_id",
        "task_state",
        "progress_current",
        "progress_total",
        "file_path",
        "finished_at",
    )
    # Shows the progress live, then the download link (web/report_views.py).
    change_form_template = "web/report/change_form.html"

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view  # staff only; anyone else goes to the login page
        return [
            path("<int:report_id>/progress/", wrap(report_views.progress), name="common_report_progress"),
            path("<int:report_id>/download/", wrap(report_views.download), name="common_report_download"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        extra = dict(extra_context or {})
        if object_id.isdigit():
            extra["progress_url"] = reverse("admin:common_report_progress", args=[int(object_id)])
        return super().change_view(request, object_id, form_url, extra)

    @admin.action(description="Generate report", permissions=["change"])
    def generate_report(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        queued: list[tuple[str, str]] = []  # (a link to the report, its task id)
        refused: list[tuple[str, str]] = []
        with transaction.atomic():  # the row says "queued" with its task id before a worker sees it
            for report in queryset.select_for_update():
                if report.status in IN_FLIGHT and report.task_id and self.task_state(report) != EXPIRED:
                    refused.append(
                        (report.name, f"already {report.status} (task {report.task_id}); wait for it")
                    )
                    continue
                task_id = reports.generate_large_report.delay(report.pk).id
                Report.objects.filter(pk=report.pk).update(
                    status=Report.Status.PENDING, task_id=task_id, progress_current=0, finished_at=None
                )
                link = reverse("admin:common_report_change", args=[report.pk])
                queued.append((format_html('<a href="{}">{}</a>', link, report.name), task_id))
        if queued:
            self.message_user(
                request,
                format_html("{} Open a report to follow its progress.", queued_message("report(s)", queued)),
                messages.SUCCESS,
            )
        if refused:
            self.message_user(request, refused_message(refused), messages.WARNING)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        """Cancelling work is its own permission (`web.revoke_task`), not "change report"."""
        return request.user.has_perm(REVOKE_TASK)

    @admin.action(description="Cancel report (revoke its task)", permissions=["revoke"])
    def cancel_report(self, request: HttpRequest, queryset: QuerySet[Report]) -> None:
        # The revoke is kept in Redis: a waiting report is dropped by the worker that takes it
        # (marked cancelled here, as it will never start), a running one stops at its next
        # progress update and removes its partial file (reports/tasks.py).
        cancelled: list[tuple[str, str]] = []
        refused: list[tuple[str, str]] = []
        with transaction.atomic():
            chosen = list(queryset.select_for_update())
            for report in chosen:
                if report.status not in IN_FLIGHT or not report.task_id:
                    refused.append((report.name, f"{report.status}: no task to cancel"))
                else:
                    cancelled.append((report.name, report.task_id))
            try:
                cancellation.revoke([task_id for _, task_id in cancelled])
            except redis.RedisError as exc:
                self.message_user(
                    request,
                    f"Nothing was cancelled: Redis is unreachable ({type(exc).__name__}).",
                    messages.ERROR,
                )
                return
            Report.objects.filter(
                pk__in=[r.pk for r in chosen],
                status=Report.Status.PENDING,
                task_id__in=[t for _, t in cancelled],
            ).update(status=Report.Status.CANCELLED, finished_at=timezone.now())
        if cancelled:
            self.message_user(
                request,
                format_html(
                    "Cancelled {} report(s): {}. A running one stops within a second or so.",
                    len(cancelled),
                    format_html_join(", ", "{} (task {})", cancelled),
                ),
                messages.SUCCESS,
            )
        if refused:
            self.message_user(request, refused_message(refused), messages.WARNING)

    @admin.display(description="Progress")
    def progress(self, obj: Report) -> str:
        if not obj.progress_total:
            return "-"
        percent = 100 * obj.progress_current // obj.progress_total
        return f"{obj.progress_current}/{obj.progress_total} ({percent}%)"

    @admin.display(description="Task state")
    def task_state(self, obj: Report) -> str:
        if not obj.task_id:
            return "-"
        from common.celery_app import current_app

        app = current_app()
        state = AsyncResult(obj.task_id, app=app).state
        return report_task_state(obj, state, _as_timedelta(app.conf.result_expires), timezone.now())


@admin.register(SentEmail)
class SentEmailAdmin(admin.ModelAdmin):
    list_display = ("key", "subject", "sent_at")


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    """Tasks waiting for the broker; the relay publishes and deletes them, so nobody edits here."""

    list_display = ("task_id", "task_name", "queue", "created_at", "attempts", "last_error")
    list_filter = ("task_name", "queue")
    search_fields = ("task_id",)

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

"""Admin over the platform's data; django_celery_beat registers the schedules itself."""

from datetime import datetime, timedelta
from typing import Any

from celery import states
from celery.result import AsyncResult
from django.contrib import admin
from django.utils import timezone

from common.models import Appointment, Doctor, Patient, Payment, Report, SentEmail
from common.outbox.models import OutboxMessage


@admin.register(Doctor)
class DoctorAdmin(admin.ModelAdmin):
    list_display = ("id", "first_name", "last_name", "email", "specialty", "external_id", "synced_at")
    search_fields = ("last_name", "email")


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "email", "gateway_customer_id")


@admin.register(Appointment)
class AppointmentAdmin(admin.ModelAdmin):
    list_display = ("id", "doctor", "patient", "scheduled_at", "amount", "payment_status", "payment_id")
    list_filter = ("payment_status",)


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
RECORDED_STATE = {Report.Status.COMPLETE: states.SUCCESS, Report.Status.FAILED: states.FAILURE}
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


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "progress", "task_state", "finished_at")
    readonly_fields = (
        "task_id",
        "task_state",
        "progress_current",
        "progress_total",
        "file_path",
        "finished_at",
    )

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

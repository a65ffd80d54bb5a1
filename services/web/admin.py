"""Admin over the platform's data; django_celery_beat registers the schedules itself."""

from typing import Any

from celery.result import AsyncResult
from django.contrib import admin

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


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "progress", "task_state", "finished_at")
    readonly_fields = ("task_id", "progress_current", "progress_total", "file_path", "finished_at")

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

        return AsyncResult(obj.task_id, app=current_app()).state


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

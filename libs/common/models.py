"""The worked example's data: doctors, patients, appointments, payments, reports.

Every task takes ids, never model instances, so messages stay JSON and a task always
reads the row as it is when it runs.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models


class Doctor(models.Model):
    first_name = models.CharField(max_length=100)
    last_name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    specialty = models.CharField(max_length=100, blank=True)
    external_id = models.CharField(max_length=64, blank=True, help_text="CRM id once synced")
    synced_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    def __str__(self) -> str:
        return f"Dr. {self.name}"


class Patient(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField()
    gateway_customer_id = models.CharField(max_length=64, help_text="The payment gateway's customer id")

    def __str__(self) -> str:
        return self.name


class Appointment(models.Model):
    class PaymentStatus(models.TextChoices):
        PENDING = "pending"
        PAID = "paid"
        DECLINED = "declined"
        FAILED = "failed"

    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, related_name="appointments")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="appointments")
    scheduled_at = models.DateTimeField()
    amount = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="EUR")
    is_paid = models.BooleanField(default=False)
    payment_status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    payment_id = models.CharField(max_length=64, blank=True)
    reminder_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["scheduled_at"])]

    def __str__(self) -> str:
        return f"Appointment #{self.pk} at {self.scheduled_at:%Y-%m-%d %H:%M}"


class Payment(models.Model):
    """One charge attempt series per appointment; the idempotency key is its identity."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        DECLINED = "declined"
        FAILED = "failed"

    appointment = models.OneToOneField(Appointment, on_delete=models.PROTECT, related_name="payment")
    idempotency_key = models.CharField(max_length=64, unique=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    gateway_payment_id = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Payment {self.idempotency_key} ({self.status})"


class Report(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETE = "complete"
        FAILED = "failed"

    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    task_id = models.CharField(max_length=64, blank=True)
    progress_current = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    file_path = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class ReportItem(models.Model):
    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="items")
    label = models.CharField(max_length=200)
    value = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))

    class Meta:
        ordering = ["pk"]


class SentEmail(models.Model):
    """Ledger of sent mail keyed by purpose, so a redelivered task sends nothing twice."""

    key = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=200)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.key

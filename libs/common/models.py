"""The worked example's data: doctors, patients, appointments, payments, reports.

Every task takes ids, never model instances, so messages stay JSON and a task always
reads the row as it is when it runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
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


# ISO 4217 (List One), the active codes of circulating currencies as of 2025 (ZWG replaced ZWL,
# XCG replaced ANG, SLE replaced SLL). Left out: fund codes (BOV, CHE, CHW, CLF, COU, MXV, USN,
# UYI, UYW), precious metals, SDR and other units, and the test/no-currency codes (XTS, XXX):
# nobody pays an appointment in them.
ISO_4217_CURRENCIES = frozenset(
    """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD
    CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP
    GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD
    KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN
    NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP
    SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES
    VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    """.split()
)


def validate_positive_amount(value: Decimal) -> None:
    """A charge of 0 or less is a data error, never something to send to the gateway."""
    if value is None or value <= 0:
        raise ValidationError("amount must be greater than 0 (got %(value)s)", params={"value": value})


def validate_currency(value: str) -> None:
    """Only an active ISO 4217 code (upper case, as gateways expect) names a currency."""
    if value not in ISO_4217_CURRENCIES:
        raise ValidationError(
            "currency %(value)r is not an active ISO 4217 code", params={"value": value}
        )


class Appointment(models.Model):
    class PaymentStatus(models.TextChoices):
        PENDING = "pending"
        PAID = "paid"
        DECLINED = "declined"
        FAILED = "failed"

    doctor = models.ForeignKey(Doctor, on_delete=models.PROTECT, related_name="appointments")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="appointments")
    scheduled_at = models.DateTimeField()
    # Validators for forms (the admin); process_payment refuses an invalid row it is given.
    amount = models.DecimalField(
        max_digits=10, decimal_places=2, default=Decimal("0"), validators=[validate_positive_amount]
    )
    currency = models.CharField(max_length=3, default="EUR", validators=[validate_currency])
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

    def charge_problems(self) -> list[str]:
        """Why the gateway must not be asked to charge this row (amount, currency); [] if none.

        One rule for the payments worker (which refuses such a row) and the admin (which
        refuses to queue it).
        """
        problems: list[str] = []
        checks: tuple[tuple[Callable[[Any], None], Any], ...] = (
            (validate_positive_amount, self.amount),
            (validate_currency, self.currency),
        )
        for validate, value in checks:
            try:
                validate(value)
            except ValidationError as exc:
                problems.extend(exc.messages)
        return problems


class Payment(models.Model):
    """An appointment's charge, committed with its idempotency key before the gateway is called.

    The key is the charge's identity at the gateway, so it must name this row and nothing
    else: `appointment-<pk>-<random>`, 144 random bits (`new_idempotency_key`), generated and
    committed under the appointment's row lock before the first call. The pk is a label for
    people; the random part is what makes the key unique and unguessable, so a primary key
    reused after a restore from an older backup can never pick up another booking's charge.
    A retry after a network error, a duplicate delivery and the reconcile job reuse the stored
    key (and the amount, currency and customer stored with it), so the gateway answers with
    the same charge; a decline moves on to a fresh random key (`key_number` counts them), so a
    card fixed since is charged afresh. Because the row exists before the charge, a crash
    mid-charge leaves a `processing` row that `payments.reconcile_payments` settles by key.

    The gateway's answer is checked against the stored amount, currency and customer before
    the appointment is marked paid; an answer that does not match leaves the row `mismatch`,
    which no worker charges again until an operator has looked (see `payments.tasks`).
    """

    class Status(models.TextChoices):
        PENDING = "pending"  # no worker is charging it now; a retry is due
        PROCESSING = "processing"  # a worker's claim: it is calling the gateway (or crashed doing so)
        SUCCEEDED = "succeeded"
        DECLINED = "declined"
        FAILED = "failed"
        # The gateway answered with a charge that is not this payment's (amount, currency or
        # customer differ, or it refused the key as used for other parameters): not paid, not
        # retried; an operator settles it at the gateway (see payments.tasks.ChargeMismatchError).
        MISMATCH = "mismatch"

    appointment = models.OneToOneField(Appointment, on_delete=models.PROTECT, related_name="payment")
    idempotency_key = models.CharField(
        max_length=64,
        unique=True,
        help_text="appointment-<pk>-<random>, committed before the gateway is called; reused by retries",
    )
    key_number = models.PositiveIntegerField(
        default=1, help_text="how many keys this payment has had: a new random key after each decline"
    )
    amount = models.DecimalField(max_digits=10, decimal_places=2, validators=[validate_positive_amount])
    currency = models.CharField(max_length=3, validators=[validate_currency])
    # db_default: a worker of the previous release, which knows no such column, can still insert.
    gateway_customer_id = models.CharField(
        max_length=64,
        blank=True,
        default="",
        db_default="",
        help_text="The gateway customer charged under the current key, stored with it",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    gateway_payment_id = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="payment_amount_positive")
        ]
        # The reconcile job's query: unsettled payments untouched for a while.
        indexes = [models.Index(fields=["status", "updated_at"], name="payment_status_updated_idx")]

    def __str__(self) -> str:
        return f"Payment {self.idempotency_key} ({self.status})"

    @staticmethod
    def new_idempotency_key(appointment_id: int) -> str:
        """A fresh key: unique and unguessable by its random part, not by the appointment's pk."""
        return f"appointment-{appointment_id}-{secrets.token_urlsafe(18)}"


class Report(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETE = "complete"
        FAILED = "failed"
        CANCELLED = "cancelled"  # its task was revoked (common.cancellation)

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

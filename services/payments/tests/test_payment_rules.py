"""The payment rules the database and forms enforce, the setting, and the migration's steps."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django_celery_beat.models import PeriodicTask

from common.models import ISO_4217_CURRENCIES, Appointment, Payment
from common.settings import SettingsError
from payments.config import load_payment_settings

migration = importlib.import_module("common.migrations.0003_payment_consistency")


def test_the_currency_list_holds_active_iso_4217_codes_only() -> None:
    assert {"EUR", "USD", "GBP", "JPY", "CHF", "XOF", "ZWG", "XCG", "SLE"} <= ISO_4217_CURRENCIES
    withdrawn, not_money = {"DEM", "FRF", "HRK", "ZWL", "SLL", "ANG"}, {"XXX", "XTS", "XAU", "XDR", "USN"}
    assert not (withdrawn | not_money) & ISO_4217_CURRENCIES
    assert all(len(c) == 3 and c.isupper() for c in ISO_4217_CURRENCIES)


@pytest.mark.parametrize(
    ("amount", "currency", "field"),
    [("0", "EUR", "amount"), ("-5", "EUR", "amount"), ("10", "XYZ", "currency"), ("10", "eur", "currency")],
)
def test_forms_refuse_a_non_positive_amount_and_an_unknown_currency(
    make_appointment: Callable[..., Appointment], amount: str, currency: str, field: str
) -> None:
    appt = make_appointment()
    payment = Payment(appointment=appt, idempotency_key="k", amount=Decimal(amount), currency=currency)
    with pytest.raises(ValidationError) as raised:
        payment.full_clean(validate_unique=False)
    assert set(raised.value.message_dict) == {field}
    appt.amount, appt.currency = Decimal(amount), currency
    with pytest.raises(ValidationError) as raised:
        appt.full_clean()
    assert set(raised.value.message_dict) == {field}


def test_the_database_refuses_a_payment_of_zero_or_less(make_appointment: Callable[..., Appointment]) -> None:
    appt = make_appointment()
    for amount in ("0", "-5"):
        with pytest.raises(IntegrityError, match="payment_amount_positive"), transaction.atomic():
            Payment.objects.create(
                appointment=appt, idempotency_key="k", amount=Decimal(amount), currency="EUR"
            )


def test_the_reconcile_delay_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_payment_settings().reconcile_after == 300
    monkeypatch.setenv("PAYMENT_RECONCILE_AFTER", "120")
    assert load_payment_settings().reconcile_after == 120
    monkeypatch.setenv("PAYMENT_RECONCILE_AFTER", "0")
    with pytest.raises(SettingsError, match="PAYMENT_RECONCILE_AFTER"):
        load_payment_settings()


def test_the_migration_names_payments_the_new_constraint_would_refuse(
    make_appointment: Callable[..., Appointment],
) -> None:
    assert connection.vendor == "postgresql", "transactional DDL: the constraint comes back on rollback"
    appt = make_appointment()
    with pytest.raises(RuntimeError, match=r"Payment rows \[\d+\] have amount <= 0"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE common_payment DROP CONSTRAINT payment_amount_positive")
        Payment.objects.create(appointment=appt, idempotency_key="k0", amount=Decimal("0"), currency="EUR")
        migration.refuse_non_positive_amounts(apps, None)
    assert not Payment.objects.filter(idempotency_key="k0").exists()


def test_the_migration_adds_the_reconcile_job_to_a_database_seeded_before_it() -> None:
    PeriodicTask.objects.filter(name__in=["payment-reconciliation", "health-check"]).delete()
    try:
        migration.seed_reconciliation(apps, None)
        job = PeriodicTask.objects.get(name="payment-reconciliation")
        assert (job.task, job.queue, job.interval.every, job.interval.period) == (
            "payments.reconcile_payments",
            "payments",
            300,
            "seconds",
        )
        assert not PeriodicTask.objects.filter(name="health-check").exists(), "a deleted job stays deleted"
    finally:
        from django.core.management import call_command

        call_command("seed_schedules", verbosity=0)

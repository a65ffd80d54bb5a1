# Payments stay consistent: a claim status, a new idempotency key after a decline, validated
# amount and currency, and the reconcile job's schedule for databases seeded before it existed.

from decimal import Decimal

from django.db import migrations, models

import common.models


def refuse_non_positive_amounts(apps, schema_editor):
    """Name the rows the new constraint would refuse, rather than fail on an anonymous IntegrityError."""
    Payment = apps.get_model("common", "Payment")
    bad = list(Payment.objects.filter(amount__lte=0).order_by("pk").values_list("pk", flat=True)[:20])
    if bad:
        raise RuntimeError(
            f"Payment rows {bad} have amount <= 0, which the check constraint payment_amount_positive "
            "refuses. Correct or delete them (nothing was charged for a valid amount), then migrate again."
        )


def seed_reconciliation(apps, schema_editor):
    """Existing databases get the reconcile job once; 0002 already made it on new ones."""
    from common.schedules import seed

    seed(
        apps.get_model("django_celery_beat", "PeriodicTask"),
        apps.get_model("django_celery_beat", "CrontabSchedule"),
        apps.get_model("django_celery_beat", "IntervalSchedule"),
        names={"payment-reconciliation"},
    )


class Migration(migrations.Migration):
    dependencies = [
        ("common", "0002_seed_schedules"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="key_number",
            field=models.PositiveIntegerField(
                default=1, help_text="n in the key appointment-<pk>-<n>; one more after each decline"
            ),
        ),
        migrations.AlterField(
            model_name="appointment",
            name="amount",
            field=models.DecimalField(
                decimal_places=2,
                default=Decimal("0"),
                max_digits=10,
                validators=[common.models.validate_positive_amount],
            ),
        ),
        migrations.AlterField(
            model_name="appointment",
            name="currency",
            field=models.CharField(default="EUR", max_length=3, validators=[common.models.validate_currency]),
        ),
        migrations.AlterField(
            model_name="payment",
            name="amount",
            field=models.DecimalField(
                decimal_places=2, max_digits=10, validators=[common.models.validate_positive_amount]
            ),
        ),
        migrations.AlterField(
            model_name="payment",
            name="currency",
            field=models.CharField(max_length=3, validators=[common.models.validate_currency]),
        ),
        migrations.AlterField(
            model_name="payment",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("processing", "Processing"),
                    ("succeeded", "Succeeded"),
                    ("declined", "Declined"),
                    ("failed", "Failed"),
                ],
                default="pending",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="payment",
            index=models.Index(fields=["status", "updated_at"], name="payment_status_updated_idx"),
        ),
        migrations.RunPython(refuse_non_positive_amounts, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="payment",
            constraint=models.CheckConstraint(
                condition=models.Q(("amount__gt", 0)), name="payment_amount_positive"
            ),
        ),
        migrations.RunPython(seed_reconciliation, migrations.RunPython.noop),
    ]

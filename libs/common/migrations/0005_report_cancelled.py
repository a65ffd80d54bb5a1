# Reports: the `cancelled` status, for a report whose task was revoked (common.cancellation).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('common', '0004_payment_random_keys'),
    ]

    operations = [
        migrations.AlterField(
            model_name='report',
            name='status',
            field=models.CharField(choices=[('pending', 'Pending'), ('running', 'Running'), ('complete', 'Complete'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='pending', max_length=16),
        ),
    ]

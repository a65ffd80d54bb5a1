"""The web app's permissions without tables (web/models.py): unmanaged models, no SQL."""

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
    ]

    operations = [
        migrations.CreateModel(
            name='AppointmentCharge',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
            ],
            options={
                'permissions': [('charge_appointment', 'Can charge an appointment now (a new payment gateway attempt)')],
                'managed': False,
                'default_permissions': (),
            },
        ),
        migrations.CreateModel(
            name='DeadLetter',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
            ],
            options={
                'permissions': [('view_deadletter', 'Can view dead letters (messages workers could not run)'), ('replay_deadletter', 'Can replay dead letters (send them to their workers again)'), ('purge_deadletter', 'Can purge dead letters (delete them for good)')],
                'managed': False,
                'default_permissions': (),
            },
        ),
    ]

"""The permission to pause and resume a queue (web/models.py): an unmanaged model, no SQL."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("web", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="QueuePause",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
            ],
            options={
                "permissions": [
                    ("pause_queue", "Can pause and resume a queue (no worker starts its tasks while paused)")
                ],
                "managed": False,
                "default_permissions": (),
            },
        ),
    ]

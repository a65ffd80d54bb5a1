"""The permission to revoke tasks (web/models.py: TaskRevocation): an unmanaged model, no SQL."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('web', '0002_queuepause'),
    ]

    operations = [
        migrations.CreateModel(
            name='TaskRevocation',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
            ],
            options={
                'permissions': [('revoke_task', 'Can revoke tasks (cancel them queued, delayed or running)')],
                'managed': False,
                'default_permissions': (),
            },
        ),
    ]

from typing import Any

from django.core.management.base import BaseCommand
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from common.schedules import seed


class Command(BaseCommand):
    help = "Create the platform's periodic tasks that are missing (never changes existing ones)."

    def handle(self, *args: Any, **options: Any) -> None:
        created = seed(PeriodicTask, CrontabSchedule, IntervalSchedule)
        self.stdout.write(f"created: {', '.join(created) or 'nothing (all present)'}")

"""The platform's periodic jobs (reminders, reports, CRM sync), seeded into django-celery-beat's tables.

Seeded once (migration 0002, or `manage.py seed_schedules`) and never overwritten,
so an operator's change in the admin (a new time, a disabled job) survives restarts.
That is why they are not in `beat_schedule`, which DatabaseScheduler rewrites on start.
Schedules name their tasks as strings, routed by prefix: beat and the migration need no
service's contract, and a test (services/scheduler/tests) checks every name is declared.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from common.routing import queue_for


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    crontab: dict[str, str] | None = None
    every_seconds: int | None = None


PERIODIC_JOBS = (
    Schedule(
        "daily-appointment-reminders", "emails.send_daily_reminders", crontab={"hour": "8", "minute": "0"}
    ),
    Schedule("hourly-sync", "sync.sync_all_doctors", crontab={"minute": "0"}),
    Schedule(
        "weekly-report",
        "reports.generate_weekly_report",
        crontab={"hour": "9", "minute": "0", "day_of_week": "1"},
    ),
    Schedule("health-check", "sync.health_check", every_seconds=300),
    # Settles payments a crash left pending/processing by asking the gateway by key.
    Schedule("payment-reconciliation", "payments.reconcile_payments", every_seconds=300),
)


def seed(
    periodic_task: Any, crontab_schedule: Any, interval_schedule: Any, names: Collection[str] | None = None
) -> list[str]:
    """Create the missing periodic jobs (only `names`, if given); return those created. Idempotent.

    `names` lets a later migration add one new job to existing databases without bringing
    back a job an operator deleted.
    """
    created = []
    for sched in PERIODIC_JOBS:
        if names is not None and sched.name not in names:
            continue
        queue = queue_for(sched.task)
        if queue is None:
            raise ValueError(f"schedule {sched.name!r} names {sched.task!r}, which is no service's task")
        if periodic_task.objects.filter(name=sched.name).exists():
            continue
        fields: dict[str, Any] = {"task": sched.task, "queue": queue}
        if sched.crontab is not None:
            cron = {"minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}
            cron.update(sched.crontab)
            fields["crontab"], _ = crontab_schedule.objects.get_or_create(**cron, timezone="UTC")
        else:
            fields["interval"], _ = interval_schedule.objects.get_or_create(
                every=sched.every_seconds, period="seconds"
            )
        periodic_task.objects.create(name=sched.name, **fields)
        created.append(sched.name)
    return created

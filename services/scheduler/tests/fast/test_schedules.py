"""The periodic jobs are seeded once, routed to their services, and never clobbered."""

from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from common.schedules import PERIODIC_JOBS
from contracts.declare import lookup


def seeded_jobs() -> dict[str, PeriodicTask]:
    return {t.name: t for t in PeriodicTask.objects.filter(name__in=[s.name for s in PERIODIC_JOBS])}


def test_every_schedule_names_a_declared_task_that_needs_no_arguments() -> None:
    # Beat sends by name with no arguments: a renamed task or a new required parameter in a
    # service's contract would fail every run in production, so it fails here first.
    for schedule in PERIODIC_JOBS:
        contract = lookup(schedule.task)  # raises UnknownTaskError naming the task
        contract.check((), {})
        assert schedule.task.split(".")[0] == contract.queue


def test_migrations_seed_the_periodic_jobs_on_their_queues() -> None:
    seeded = seeded_jobs()
    assert set(seeded) == {
        "daily-appointment-reminders",
        "hourly-sync",
        "weekly-report",
        "health-check",
        "payment-reconciliation",
    }
    for task in seeded.values():
        assert task.queue == lookup(task.task).queue
    assert (
        seeded["daily-appointment-reminders"].crontab.hour,
        seeded["daily-appointment-reminders"].crontab.minute,
    ) == ("8", "0")
    weekly = seeded["weekly-report"].crontab
    assert (weekly.hour, weekly.minute, weekly.day_of_week) == ("9", "0", "1")
    assert seeded["hourly-sync"].crontab.minute == "0" and seeded["hourly-sync"].crontab.hour == "*"
    assert (seeded["health-check"].interval.every, seeded["health-check"].interval.period) == (300, "seconds")
    reconcile = seeded["payment-reconciliation"]
    assert (reconcile.task, reconcile.interval.every, reconcile.interval.period) == (
        "payments.reconcile_payments",
        300,
        "seconds",
    )


def test_seeding_again_creates_nothing_and_keeps_an_operators_changes() -> None:
    PeriodicTask.objects.filter(name="hourly-sync").update(enabled=False)
    PeriodicTask.objects.filter(name="health-check").delete()
    call_command("seed_schedules")
    call_command("seed_schedules")
    seeded = seeded_jobs()
    assert len(seeded) == 5, "a deleted schedule is recreated once, nothing is duplicated"
    assert seeded["hourly-sync"].enabled is False, "an operator's disable survives re-seeding"
    assert PeriodicTask.objects.filter(name="health-check").count() == 1

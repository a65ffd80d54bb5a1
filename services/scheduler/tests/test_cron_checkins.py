"""Sentry cron check-ins from a real beat (DatabaseScheduler, leader lock) and real workers.

Beat sends `in_progress` when it sends a due job (sentry-sdk's `monitor_beat_tasks`, which
puts the monitor slug and check-in id in the message headers); the worker that runs it sends
`ok` or `error` under the same check-in id. The monitor slug is the periodic task's name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from common.observability.sentry import cron_monitor_problem
from common.schedules import PERIODIC_JOBS
from devtools.processes import ServiceProcess
from devtools.sandboxes.sentry import SentrySink
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers

JOBS = [s.name for s in PERIODIC_JOBS]
FAILING = "probe-failing-job"
TOO_OFTEN = "probe-every-second"
WORKER_SERVICES = ["emails", "payments", "reports", "sync"]
HOURLY_SHIFTED = ("daily-appointment-reminders", "weekly-report")


def check_ins(sink: SentrySink) -> list[dict[str, Any]]:
    return [p for env in sink.envelopes for h, p in env if h.get("type") == "check_in"]


def by_slug(sink: SentrySink, slug: str) -> list[dict[str, Any]]:
    return [c for c in check_ins(sink) if c["monitor_slug"] == slug]


def opened_and_closed(sink: SentrySink, slug: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first run's check-ins: beat's opening one and a worker's closing one.

    Two processes send them, each through its own Sentry transport thread, so a fast task's
    closing check-in can reach Sentry first; Sentry pairs them by check_in_id, not by order.
    """
    seen = by_slug(sink, slug)
    started = next(c for c in seen if c["status"] == "in_progress")
    done = next(c for c in seen if c["status"] != "in_progress")
    return started, done


@pytest.fixture(scope="module")
def sentry() -> Iterator[SentrySink]:
    with SentrySink() as sink:
        yield sink


@pytest.fixture(scope="module")
def due_jobs() -> Iterator[None]:
    """The five periodic jobs, as seeded, all due now; a job that fails; one too frequent for Crons.

    DatabaseScheduler only loads crontab jobs whose hour is within two hours of now, so the
    daily and weekly jobs get this hour (minute and weekday as seeded) for the test.
    """
    PeriodicTask.objects.exclude(name__startswith="celery.").update(enabled=False)
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=8)  # past every crontab's last occurrence
    assert PeriodicTask.objects.filter(name__in=JOBS).update(enabled=True, last_run_at=long_ago) == 5
    seeded = {}
    for name in HOURLY_SHIFTED:
        job = PeriodicTask.objects.get(name=name)
        seeded[name] = job.crontab
        shifted, _ = CrontabSchedule.objects.get_or_create(
            minute=job.crontab.minute,
            hour=str(now.hour),
            day_of_week=job.crontab.day_of_week,
            day_of_month=job.crontab.day_of_month,
            month_of_year=job.crontab.month_of_year,
            timezone="UTC",
        )
        PeriodicTask.objects.filter(pk=job.pk).update(crontab=shifted)
    every_minute, _ = CrontabSchedule.objects.get_or_create(
        minute="*", hour="*", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    )
    # Sent unchecked by beat, as an operator could type it in the admin: no such doctor.
    PeriodicTask.objects.create(
        name=FAILING,
        task="sync.create_account",
        args=json.dumps([{"doctor_id": 424242, "valid": True, "problems": []}]),
        crontab=every_minute,
        queue="sync",
        last_run_at=long_ago,
    )
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.create(
        name=TOO_OFTEN, task="sync.echo", args="[1]", interval=every_second, queue="sync"
    )
    yield
    PeriodicTask.objects.filter(name__in=[FAILING, TOO_OFTEN]).delete()
    for name, crontab in seeded.items():
        PeriodicTask.objects.filter(name=name).update(crontab=crontab)
    PeriodicTask.objects.filter(name__in=JOBS).update(enabled=False)


@pytest.fixture(scope="module")
def running(
    data_dir: Path, peers_env: dict[str, str], sentry: SentrySink, due_jobs: None
) -> Iterator[Path]:
    env = {"SENTRY_DSN": sentry.dsn, "SENTRY_TRACES_SAMPLE_RATE": "0"}
    workers = Workers(data_dir)
    log = data_dir / "beat-crons.log"
    beat = ServiceProcess(
        "beat-crons",
        "scheduler.beat",
        ["--max-interval=1"],
        env={"DJANGO_SETTINGS_MODULE": "common.django_settings", **env},
        log=log,
    )
    try:
        worker_env = {**peers_env, **env}
        workers.start(WORKER_SERVICES, env={s: worker_env for s in WORKER_SERVICES})
        beat.start()
        yield log
    finally:
        beat.stop()
        workers.stop()


def finished(sink: SentrySink, slug: str) -> bool:
    return any(c["status"] in ("ok", "error") for c in by_slug(sink, slug))


def wait_for_check_ins(sink: SentrySink, slugs: list[str], log: Path) -> None:
    try:
        wait_until(lambda: all(finished(sink, slug) for slug in slugs), timeout=90)
    except AssertionError:
        seen = [(c["monitor_slug"], c["status"]) for c in check_ins(sink)]
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise AssertionError(
            f"check-ins of {slugs} not closed; seen {seen}\n--- beat log ---\n{tail}"
        ) from None


def test_each_periodic_job_checks_in_progress_then_ok_under_its_own_slug(running, sentry) -> None:
    wait_for_check_ins(sentry, JOBS, running)
    for slug in JOBS:
        started, done = opened_and_closed(sentry, slug)  # each job fired once (next run minutes away)
        assert started["status"] == "in_progress", slug
        assert done["status"] == "ok", (slug, done)
        assert done["check_in_id"] == started["check_in_id"], slug
        assert started["release"].startswith("scheduler@")  # beat opens the check-in ...
        assert done["release"].split("@")[0] in WORKER_SERVICES  # ... a worker closes it
        assert done["monitor_config"]["schedule"] == started["monitor_config"]["schedule"]
    schedules = {slug: by_slug(sentry, slug)[0]["monitor_config"]["schedule"] for slug in JOBS}
    assert schedules["health-check"] == {"type": "interval", "value": 5, "unit": "minute"}
    assert schedules["payment-reconciliation"] == {"type": "interval", "value": 5, "unit": "minute"}
    assert schedules["hourly-sync"] == {"type": "crontab", "value": "0 * * * *"}
    hour = datetime.now(UTC).hour  # see due_jobs (seeded: 8 and 9); a test across the hour may differ by one
    assert schedules["daily-appointment-reminders"]["value"] in {
        f"0 {h % 24} * * *" for h in (hour - 1, hour)
    }
    assert schedules["weekly-report"]["value"] in {f"0 {h % 24} * * 1" for h in (hour - 1, hour)}


def test_a_failing_job_checks_in_error(running, sentry) -> None:
    wait_for_check_ins(sentry, [FAILING], running)
    started, done = opened_and_closed(sentry, FAILING)
    assert (started["status"], done["status"]) == ("in_progress", "error")
    assert done["check_in_id"] == started["check_in_id"]
    assert done["release"].startswith("sync@")


def test_a_job_too_frequent_for_crons_is_named_in_beats_log(running, sentry) -> None:
    wait_until(lambda: f"{TOO_OFTEN!r} is not monitored" in running.read_text(), timeout=60)
    assert by_slug(sentry, TOO_OFTEN) == []  # Sentry Crons takes whole minutes only
    assert running.read_text().count(f"{TOO_OFTEN!r} is not monitored") == 1  # once, not every second


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        (IntervalSchedule(every=300, period="seconds").schedule, None),
        (IntervalSchedule(every=2, period="hours").schedule, None),
        (CrontabSchedule(minute="0", hour="8").schedule, None),
        (IntervalSchedule(every=30, period="seconds").schedule, "30 s is shorter than a minute"),
        (IntervalSchedule(every=90, period="seconds").schedule, "90 s is no whole number of minutes"),
    ],
)
def test_which_schedules_sentry_crons_can_monitor(schedule, problem) -> None:
    assert cron_monitor_problem(schedule) == problem

"""Real beat processes: schedules edited in the database fire without a restart, once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from devtools.processes import ServiceProcess
from devtools.testing.waiting import wait_until

QUEUE = "sync"


def start_beat(data_dir: Path, name: str) -> ServiceProcess:
    return ServiceProcess(
        name,
        "scheduler.beat",
        ["--max-interval=1"],
        env={"DJANGO_SETTINGS_MODULE": "common.django_settings"},
        log=data_dir / f"{name}.log",
    ).start()


def queued(redis_client) -> int:
    return int(redis_client.llen(QUEUE))


@pytest.fixture
def every_second() -> Iterator[PeriodicTask]:
    """Only our probe job is enabled; the seeded periodic jobs are paused for the test."""
    PeriodicTask.objects.exclude(name__startswith="celery.").update(enabled=False)
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    task = PeriodicTask.objects.create(
        name="probe-health-check", task="sync.health_check", interval=interval, queue=QUEUE, enabled=False
    )
    yield task
    task.delete()


def test_a_schedule_added_while_beat_runs_fires_on_its_queue(data_dir, redis_client, every_second) -> None:
    redis_client.delete(QUEUE)
    beat = start_beat(data_dir, "beat-a")
    try:
        time.sleep(3)  # beat is up and has read the schedules
        assert queued(redis_client) == 0
        every_second.enabled = True
        every_second.save()  # as the admin does: save() marks the schedules changed
        wait_until(lambda: queued(redis_client) >= 2, timeout=60)
    finally:
        beat.stop()
    message = json.loads(redis_client.lindex(QUEUE, 0))
    assert message["headers"]["task"] == "sync.health_check"


def test_two_beats_do_not_double_fire_and_a_standby_takes_over(data_dir, redis_client, every_second) -> None:
    redis_client.delete(QUEUE)
    every_second.enabled = True
    every_second.save()
    first, second = start_beat(data_dir, "beat-1"), start_beat(data_dir, "beat-2")
    try:
        wait_until(lambda: queued(redis_client) >= 1, timeout=60)
        start, t0 = queued(redis_client), time.monotonic()
        time.sleep(8)
        rate = (queued(redis_client) - start) / (time.monotonic() - t0)
        # Two schedulers would fire ~2/s; a loaded machine may tick late, so only the top is tight.
        assert 0.3 <= rate <= 1.5, f"one job per second expected from one leader, got {rate:.2f}/s"

        leader = first if "became the leader" in (data_dir / "beat-1.log").read_text() else second
        standby = second if leader is first else first
        leader.stop()
        before = queued(redis_client)
        # The stopped leader released its lock on the way out; a killed one's lock expires in 30 s.
        wait_until(lambda: queued(redis_client) >= before + 3, timeout=60)
        assert "became the leader" in (data_dir / f"{standby.name}.log").read_text()
    finally:
        first.stop()
        second.stop()


def test_with_json_logs_every_line_beat_writes_is_json(data_dir, redis_client, every_second) -> None:
    every_second.enabled = True
    every_second.save()
    log = data_dir / "beat-json.log"
    beat = ServiceProcess(
        "beat-json",
        "scheduler.beat",
        ["--max-interval=1"],
        env={"DJANGO_SETTINGS_MODULE": "common.django_settings", "LOG_FORMAT": "json"},
        log=log,
    ).start()
    try:
        wait_until(lambda: "sync.health_check" in log.read_text(), timeout=60)
    finally:
        beat.stop()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"beat wrote a line that is not JSON: {line!r}")
    assert any("sync.health_check" in r.get("message", "") for r in records), records[-5:]
    assert all(r.get("service") == "scheduler" for r in records), records[:3]

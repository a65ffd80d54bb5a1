"""A task that opts in keeps its final failure as a dead letter, and replay finishes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.celery_app import current_app
from common.deadletters import DeadLetters
from common.deadletters.replay import replay
from common.models import Doctor
from contracts import sync
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    try:
        w.start(["sync"], env={"sync": peers_env})
        yield w
    finally:
        w.stop()


def test_retries_exhausted_go_to_dead_letters_and_replay_completes_them(
    workers, crm_sandbox, redis_url: str
) -> None:
    store = DeadLetters(redis.Redis.from_url(redis_url))
    doctor = Doctor.objects.create(first_name="Dead", last_name="Letter", email="dl@faults.example")
    crm_sandbox.faults.fail = 100  # the CRM stays down through every retry
    result = sync.sync_doctor_to_external_system.delay(doctor.pk)
    with pytest.raises(Exception):  # noqa: B017 - the CRM's HTTPError, as the task raised it
        result.get(timeout=60)
    # Celery stores FAILURE, then signals the failure that files the dead letter.
    wait_until(lambda: [e for e in store.list("sync", reason="failed") if e.task_id == result.id], timeout=10)
    [entry] = [e for e in store.list("sync", reason="failed") if e.task_id == result.id]
    assert entry.task == "sync.sync_doctor_to_external_system"
    assert "after 3 retries" in entry.detail
    assert "dl@faults.example" not in entry.detail  # no PII in what operators read

    crm_sandbox.faults.fail = 0  # the CRM is back: the owed work can be finished
    outcome = replay(store, entry.id)
    assert outcome.replayed, outcome

    # Same task id: its result goes from the old FAILURE to the replay's SUCCESS (read
    # past this process's cache of ready results, as any other process would see it).
    def meta() -> dict:
        return current_app().backend.get_task_meta(result.id, cache=False)

    wait_until(lambda: meta()["status"] == "SUCCESS", timeout=30)
    assert meta()["result"]["status"] == "synced"
    doctor.refresh_from_db()
    assert doctor.external_id
    assert store.get(entry.id) is None

"""The CRM sync service against a real worker and a real HTTP CRM sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from common.models import Doctor
from common.transport.locks import task_lock
from contracts import sync
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def worker(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    # A 1 s CRM timeout keeps the hanging-CRM test short; production keeps 30 s.
    w.start(["sync"], env={"sync": {**peers_env, "CRM_TIMEOUT": "1"}})
    yield w
    w.stop()


@pytest.fixture
def doctor() -> Doctor:
    n = Doctor.objects.count()
    return Doctor.objects.create(first_name="Ada", last_name="Lovelace", email=f"ada{n}@clinic.example")


def crm_posts(crm_sandbox, doctor: Doctor) -> list[dict]:
    return [r for r in crm_sandbox.requests if r["body"] and r["body"].get("reference") == str(doctor.pk)]


def test_sync_returns_the_crm_id_and_stores_it(worker: Workers, crm_sandbox, doctor: Doctor) -> None:
    result = sync.sync_doctor_to_external_system.delay(doctor.pk).get(timeout=30)
    external_id = crm_sandbox.doctors[str(doctor.pk)]["id"]
    assert result == {"status": "synced", "external_id": external_id}
    doctor.refresh_from_db()
    assert doctor.external_id == external_id and doctor.synced_at is not None


def test_request_errors_are_retried_with_backoff_until_the_crm_answers(
    worker: Workers, crm_sandbox, doctor
) -> None:
    crm_sandbox.faults.fail = 2  # two HTTP 503s, then success
    result = sync.sync_doctor_to_external_system.delay(doctor.pk)
    assert result.get(timeout=60)["status"] == "synced"
    assert len(crm_posts(crm_sandbox, doctor)) == 3


def test_a_crm_that_hangs_times_out_and_is_retried(worker: Workers, crm_sandbox, doctor) -> None:
    crm_sandbox.faults.hang, crm_sandbox.faults.delay = 1, 3.0  # longer than CRM_TIMEOUT=1
    result = sync.sync_doctor_to_external_system.delay(doctor.pk)
    assert result.get(timeout=60)["status"] == "synced"
    assert len(crm_posts(crm_sandbox, doctor)) == 2


def test_gives_up_after_three_retries(worker: Workers, crm_sandbox, doctor) -> None:
    crm_sandbox.faults.fail = 10
    result = sync.sync_doctor_to_external_system.delay(doctor.pk)
    with pytest.raises(requests.HTTPError, match="503"):
        result.get(timeout=90, propagate=True)
    assert len(crm_posts(crm_sandbox, doctor)) == 4  # the first try + max_retries=3


def test_missing_doctor_is_skipped_without_retrying(worker: Workers, crm_sandbox) -> None:
    before = len(crm_sandbox.requests)
    result = sync.sync_doctor_to_external_system.delay(10_000_000).get(timeout=30)
    assert result == {"status": "skipped", "reason": "doctor not found"}
    assert len(crm_sandbox.requests) == before


def test_sync_all_fans_out_one_sync_per_doctor(worker: Workers, crm_sandbox) -> None:
    result = sync.sync_all_doctors.delay().get(timeout=30)
    assert result == {"status": "success", "queued": Doctor.objects.count()}


def test_sync_all_is_skipped_while_another_run_holds_the_lock(worker: Workers) -> None:
    with task_lock("task-lock-sync.sync_all_doctors", timeout=30) as acquired:
        assert acquired
        result = sync.sync_all_doctors.delay().get(timeout=30)
    assert result == {"status": "skipped", "reason": "already running"}
    assert sync.sync_all_doctors.delay().get(timeout=30)["status"] == "success"

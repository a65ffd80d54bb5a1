"""The sync service's tasks as they end in production: the CRM retried, skipped or refused.

The CRM is faked at the HTTP edge (requests answered on our client's own session).
"""

from __future__ import annotations

import pytest

from common.models import Doctor
from contracts import sync


def doctor(n=1, **fields):
    values = {"first_name": "Ada", "last_name": f"Byron{n}", "email": f"ada{n}@clinic.example", **fields}
    return Doctor.objects.create(**values)


def test_a_doctor_is_synced_and_keeps_the_crms_id(jobs, crm):
    d = doctor()
    sync.sync_doctor_to_external_system.delay(d.pk)
    jobs.run_all()
    assert jobs.outcome("sync.sync_doctor_to_external_system").result == {
        "status": "synced",
        "external_id": f"crm-{d.pk}",
    }
    d.refresh_from_db()
    assert d.external_id == f"crm-{d.pk}" and d.synced_at is not None
    assert crm.doctors[str(d.pk)]["email"] == d.email


def test_the_crm_call_carries_an_idempotency_key_per_doctor(jobs, crm):
    d = doctor()
    sync.sync_doctor_to_external_system.delay(d.pk)
    jobs.run_all()
    sync.sync_doctor_to_external_system.delay(d.pk)  # after the first started (unique until start)
    jobs.run_all()
    assert [c.headers["Idempotency-Key"] for c in crm.calls] == [f"doctor-{d.pk}"] * 2
    assert len(crm.doctors) == 1


def test_a_doctor_deleted_since_is_skipped_without_calling_the_crm(jobs, crm):
    sync.sync_doctor_to_external_system.delay(12345)
    jobs.run_all()
    assert jobs.outcome("sync.sync_doctor_to_external_system").result == {
        "status": "skipped",
        "reason": "doctor not found",
    }
    assert crm.calls == []


@pytest.mark.parametrize("outage", ["down", "503", "429"])
def test_a_crm_outage_is_retried_and_the_doctor_then_synced(jobs, crm, outage):
    d = doctor()
    if outage == "down":
        crm.down = 2
    else:
        crm.fail_next(2, status=int(outage))
    sync.sync_doctor_to_external_system.delay(d.pk)
    jobs.run_all()
    outcome = jobs.outcome("sync.sync_doctor_to_external_system")
    assert (outcome.state, outcome.retries) == ("SUCCESS", 2)
    assert len(crm.calls) == 3
    assert jobs.dead_letters == []


def test_a_crm_that_stays_down_ends_in_a_dead_letter_after_three_retries(jobs, crm):
    d = doctor()
    crm.down = 100
    result = sync.sync_doctor_to_external_system.delay(d.pk)
    jobs.run_all()
    outcome = jobs.outcome(result.id)
    assert (outcome.state, outcome.retries) == ("FAILURE", 3)
    assert len(crm.calls) == 4
    (letter,) = jobs.dead_letters
    assert (letter.queue, letter.task_id, letter.reason) == ("sync", result.id, "failed")
    d.refresh_from_db()
    assert d.external_id == ""


def test_a_record_the_crm_refuses_fails_at_once_without_retrying(jobs, crm):
    d = doctor()
    crm.fail_next(1, status=422)
    sync.sync_doctor_to_external_system.delay(d.pk)
    jobs.run_all()
    outcome = jobs.outcome("sync.sync_doctor_to_external_system")
    assert outcome.state == "FAILURE"
    assert type(outcome.result).__name__ == "CRMRejectedError"
    assert len(crm.calls) == 1


def test_syncing_all_doctors_queues_one_sync_per_doctor(jobs, crm):
    ids = [doctor(n).pk for n in range(1, 4)]
    sync.sync_all_doctors.delay()
    jobs.run_next()
    assert jobs.outcome("sync.sync_all_doctors").result == {"status": "success", "queued": 3}
    assert jobs.queued == [("sync.sync_doctor_to_external_system", [i], {}) for i in ids]
    jobs.run_all()
    assert sorted(crm.doctors) == sorted(str(i) for i in ids)


def test_a_second_sync_all_while_one_runs_is_skipped(jobs, crm):
    doctor()
    jobs.redis.set("lock:task-lock-sync.sync_all_doctors", "running", nx=True)
    sync.sync_all_doctors.delay()
    jobs.run_all()
    assert jobs.outcome("sync.sync_all_doctors").result == {"status": "skipped", "reason": "already running"}
    assert crm.calls == []


@pytest.mark.parametrize(
    ("fields", "problems"),
    [({}, []), ({"last_name": ""}, ["missing last name"]), ({"email": ""}, ["missing email"])],
)
def test_validate_doctor_names_what_is_missing(jobs, fields, problems):
    d = doctor(**fields)
    sync.validate_doctor.delay(d.pk)
    jobs.run_all()
    assert jobs.outcome("sync.validate_doctor").result == {
        "doctor_id": d.pk,
        "valid": not problems,
        "problems": problems,
    }


def test_validate_doctor_of_no_doctor_is_invalid(jobs):
    sync.validate_doctor.delay(404)
    jobs.run_all()
    assert jobs.outcome("sync.validate_doctor").result["problems"] == ["doctor not found"]


def test_an_invalid_doctor_gets_no_crm_account(jobs, crm):
    sync.create_account.delay({"doctor_id": 1, "valid": False, "problems": ["missing email"]})
    jobs.run_all()
    assert jobs.outcome("sync.create_account").result["account_created"] is False
    assert crm.calls == []


def test_the_onboarding_chain_ends_with_one_account_and_one_mail(jobs, crm, mailbox):
    from contracts import emails

    d = doctor()
    (sync.validate_doctor.s(d.pk) | sync.create_account.s() | emails.send_onboarding_email.s()).apply_async()
    outcomes = jobs.run_all()
    assert outcomes[-1].result == {
        "doctor_id": d.pk,
        "valid": True,
        "problems": [],
        "account_created": True,
        "external_id": f"crm-{d.pk}",
        "email_sent": True,
    }
    assert len(crm.calls) == 1
    assert len(mailbox) == 1


def test_an_invalid_doctor_stops_the_chain_before_the_crm(jobs, crm, mailbox):
    from contracts import emails

    d = doctor(email="")
    (sync.validate_doctor.s(d.pk) | sync.create_account.s() | emails.send_onboarding_email.s()).apply_async()
    outcomes = jobs.run_all()
    assert outcomes[1].result["account_created"] is False
    assert crm.calls == []


def test_echo_round_trips_its_argument_as_json(jobs):
    result = sync.echo.delay(7)
    jobs.run_all()
    assert result.get(timeout=1) == 7

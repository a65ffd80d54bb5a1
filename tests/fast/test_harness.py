"""The fast tier's stub broker: what production applies on the way out and on receipt applies here.

Each test reads as the user's: "sending X queued Y; running it did Z". Nothing of ours is
faked: the producer path (contract check, JSON, the outbox after commit) and the receipt
path (the intake, Celery's tracer, retries) are the real ones.
"""

from __future__ import annotations

import pytest
from celery import current_app
from django.db import transaction

from common import calls
from common.outbox.models import OutboxMessage
from contracts import emails, sync
from contracts.declare import InvalidTaskArgumentsError, UnknownTaskError
from devtools.testing.jobs import Jobs, NoJobsHarnessError


def make_doctor(n: int = 1, **fields):
    from common.models import Doctor

    values = {"first_name": "Ada", "last_name": f"Lovelace{n}", "email": f"ada{n}@clinic.example", **fields}
    return Doctor.objects.create(**values)


# -- on the way out: the contract, JSON, the queue


def test_a_send_is_queued_with_its_arguments_as_the_message_carries_them(jobs):
    emails.send_welcome_email.delay(42)
    assert jobs.queued == [("emails.send_welcome_email", [42], {})]


def test_keyword_arguments_are_queued_as_keywords(jobs):
    calls.apply_async("emails.send_welcome_email", kwargs={"doctor_id": 7})
    assert jobs.queued == [("emails.send_welcome_email", [], {"doctor_id": 7})]


def test_a_message_is_routed_to_the_queue_its_name_names(jobs):
    emails.send_welcome_email.delay(1)
    sync.sync_doctor_to_external_system.delay(1)
    assert [(m.queue, m.task) for m in jobs.messages] == [
        ("emails", "emails.send_welcome_email"),
        ("sync", "sync.sync_doctor_to_external_system"),
    ]


def test_the_message_is_the_json_protocol_2_envelope_redis_would_hold(jobs):
    result = emails.send_welcome_email.delay(5)
    envelope = jobs.messages[0].envelope
    assert envelope["content-type"] == "application/json"
    assert envelope["headers"]["id"] == result.id
    assert envelope["headers"]["task"] == "emails.send_welcome_email"
    assert envelope["properties"]["body_encoding"] == "base64"


def test_an_unknown_task_name_is_refused_before_anything_is_queued(jobs):
    with pytest.raises(UnknownTaskError, match="declares no such task"):
        calls.delay("emails.send_welcome_mail", 1)
    assert jobs.queued == []


def test_arguments_of_the_wrong_type_are_refused_before_anything_is_queued(jobs):
    with pytest.raises(InvalidTaskArgumentsError, match="doctor_id"):
        emails.send_welcome_email.delay("42")
    assert jobs.queued == []


def test_a_missing_argument_is_refused_before_anything_is_queued(jobs):
    with pytest.raises(InvalidTaskArgumentsError):
        emails.send_welcome_email.delay()
    assert jobs.queued == []


def test_a_key_the_shape_does_not_declare_cannot_ride_along(jobs):
    with pytest.raises(InvalidTaskArgumentsError, match="email"):
        emails.send_onboarding_email.delay({"doctor_id": 1, "email": "ada@clinic.example"})
    assert jobs.queued == []


def test_arguments_larger_than_the_payload_limit_are_refused(jobs):
    from common.settings import get_settings

    limit = get_settings().task_max_payload_bytes
    with pytest.raises(calls.PayloadTooLargeError, match="TASK_MAX_PAYLOAD_BYTES"):
        emails.notify_admin.delay({"event": "x" * limit})
    assert jobs.queued == []


def test_a_fan_out_queues_one_message_per_call_in_order(jobs):
    calls.send_many(emails.send_appointment_reminder, [(i,) for i in (3, 1, 2)])
    assert jobs.queued == [("emails.send_appointment_reminder", [i], {}) for i in (3, 1, 2)]


def test_a_fan_out_with_one_bad_call_sends_none(jobs):
    with pytest.raises(InvalidTaskArgumentsError):
        calls.send_many(emails.send_appointment_reminder, [(1,), ("two",)])
    assert jobs.queued == []


# -- the transaction: published after the commit, never on rollback


@pytest.mark.parametrize("how", ["delay", "send_many"])
def test_a_task_sent_in_a_transaction_is_queued_only_when_it_commits(jobs, how):
    with transaction.atomic():
        if how == "delay":
            emails.send_welcome_email.delay(1)
        else:
            calls.send_many(emails.send_welcome_email, [(1,)])
        assert jobs.queued == []
        assert OutboxMessage.objects.count() == 1
    assert jobs.queued == [("emails.send_welcome_email", [1], {})]
    assert OutboxMessage.objects.count() == 0


@pytest.mark.parametrize("how", ["delay", "send_many"])
def test_a_rolled_back_save_sends_nothing(jobs, how):
    from common.models import Doctor

    with pytest.raises(RuntimeError), transaction.atomic():
        doctor = make_doctor()
        if how == "delay":
            emails.send_welcome_email.delay(doctor.pk)
        else:
            calls.send_many(emails.send_welcome_email, [(doctor.pk,)])
        raise RuntimeError("the save fails")
    assert jobs.queued == []
    assert jobs.run_all() == []
    assert not Doctor.objects.exists()
    assert OutboxMessage.objects.count() == 0


def test_a_rolled_back_savepoint_drops_only_its_own_tasks(jobs):
    with transaction.atomic():
        emails.send_welcome_email.delay(1)
        try:
            with transaction.atomic():
                emails.send_welcome_email.delay(2)
                raise ValueError
        except ValueError:
            pass
    assert jobs.queued == [("emails.send_welcome_email", [1], {})]


def test_a_message_published_from_the_outbox_is_marked_as_such(jobs):
    with transaction.atomic():
        emails.send_welcome_email.delay(1)
    emails.send_welcome_email.delay(2)
    first, second = jobs.messages
    assert first.headers.get("x_outbox") is True
    assert "x_outbox" not in second.headers


def test_the_caller_gets_the_task_id_the_message_carries(jobs):
    with transaction.atomic():
        result = emails.send_welcome_email.delay(1)
    assert jobs.messages[0].id == result.id


def test_outbox_false_publishes_at_once_even_inside_a_transaction(jobs):
    with transaction.atomic():
        calls.apply_async("emails.send_welcome_email", (1,), outbox=False)
        assert jobs.queued == [("emails.send_welcome_email", [1], {})]


# -- on receipt: the intake, the tracer, the result


def test_running_a_task_stores_its_json_result_for_the_caller(jobs):
    result = sync.echo.delay(41)
    jobs.run_all()
    assert jobs.outcome(result.id).state == "SUCCESS"
    assert result.get(timeout=1) == 41


def test_a_message_that_does_not_fit_the_contract_is_dead_lettered_on_receipt(jobs):
    # Sent unchecked, as an older or foreign producer could: the worker's intake still refuses it.
    current_app.send_task("emails.send_welcome_email", ["not-an-id"], {})
    assert jobs.run_all() == []
    (letter,) = jobs.dead_letters
    assert letter.reason == "invalid_arguments" or "argument" in letter.detail
    assert letter.task == "emails.send_welcome_email"
    assert jobs.outcome("emails.send_welcome_email").state == "FAILURE"


def test_a_message_naming_no_task_is_dead_lettered_on_receipt(jobs):
    current_app.send_task("emails.no_such_task", [], {}, queue="emails")
    jobs.run_all()
    assert [d.task for d in jobs.dead_letters] == ["emails.no_such_task"]
    assert "no task" in jobs.dead_letters[0].detail


def test_a_redelivered_outbox_message_runs_again_but_a_second_copy_is_dropped(jobs, mailbox):
    doctor = make_doctor()
    with transaction.atomic():
        result = emails.send_welcome_email.delay(doctor.pk)
    jobs.run_all()
    # The relay republished the row: a copy with the same id and another delivery tag.
    copy = jobs.published[0].envelope
    copy["properties"]["delivery_tag"] = "another-tag"
    import json

    jobs._put("emails", json.dumps(copy).encode())
    assert jobs.run_all() == []  # dropped by the intake, not dead-lettered
    assert jobs.dead_letters == []
    assert len(mailbox) == 1
    assert jobs.outcome(result.id).state == "SUCCESS"


def test_the_tasks_a_task_sends_are_queued_behind_it_and_run_in_order(jobs, crm):
    make_doctor(1)
    make_doctor(2)
    sync.sync_all_doctors.delay()
    outcomes = jobs.run_all()
    assert [o.task for o in outcomes] == [
        "sync.sync_all_doctors",
        "sync.sync_doctor_to_external_system",
        "sync.sync_doctor_to_external_system",
    ]
    assert all(o.ok for o in outcomes)


def test_a_chain_runs_each_step_on_its_own_queue(jobs, crm, mailbox):
    doctor = make_doctor()
    flow = sync.validate_doctor.s(doctor.pk) | sync.create_account.s() | emails.send_onboarding_email.s()
    flow.apply_async()
    outcomes = jobs.run_all()
    assert [o.task for o in outcomes] == [
        "sync.validate_doctor",
        "sync.create_account",
        "emails.send_onboarding_email",
    ]
    assert [m.queue for m in jobs.ran] == ["sync", "sync", "emails"]
    assert outcomes[-1].result["email_sent"] is True
    assert outcomes[-1].result["external_id"] == f"crm-{doctor.pk}"
    assert len(mailbox) == 1


def test_run_all_returns_nothing_when_nothing_was_sent(jobs):
    assert jobs.run_all() == []
    assert jobs.outcomes == []


def test_join_is_run_all(jobs):
    sync.echo.delay(1)
    assert [o.result for o in jobs.join()] == [1]


def test_outcome_by_name_needs_exactly_one_run(jobs):
    sync.echo.delay(1)
    sync.echo.delay(2)
    jobs.run_all()
    assert sorted(jobs.results("sync.echo")) == [1, 2]
    with pytest.raises(LookupError):
        jobs.outcome("sync.echo")


def test_clear_drops_what_is_queued(jobs):
    sync.echo.delay(1)
    jobs.clear()
    assert jobs.run_all() == []


# -- no server


def test_nothing_opens_a_network_connection(fast_session, jobs, mailbox, crm, network_attempts):
    from common.settings import get_settings

    assert get_settings().redis_url.endswith(":9/0")  # a closed port: nothing may dial it
    doctor = make_doctor()
    with transaction.atomic():
        emails.send_welcome_email.delay(doctor.pk)
        sync.sync_doctor_to_external_system.delay(doctor.pk)
    jobs.run_all()
    assert [o.state for o in jobs.outcomes] == ["SUCCESS", "SUCCESS"]
    assert network_attempts() == []


def test_a_connection_attempt_is_refused_and_recorded(fast_session, network_attempts):
    import socket

    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", 6379), timeout=1):
        pass
    assert ("127.0.0.1", 6379) in network_attempts()


def test_without_the_harness_a_send_is_kept_in_the_outbox_not_lost(fast_session, network_attempts):
    # No `jobs` fixture: the send goes for the (closed) Redis, is refused at once, and kept.
    calls._broker_down_until.clear()
    emails.send_welcome_email.delay(1)
    calls._broker_down_until.clear()
    assert OutboxMessage.objects.filter(task_name="emails.send_welcome_email").count() == 1
    assert network_attempts()


def test_the_stub_transport_refuses_a_publish_with_no_harness_active():
    with Jobs():
        pass
    from devtools.testing.jobs import StubChannel

    with pytest.raises(NoJobsHarnessError):
        StubChannel._put(None, "emails", {})  # type: ignore[arg-type]


def test_a_harness_cannot_be_nested(jobs):
    with pytest.raises(RuntimeError, match="already active"), Jobs():
        pass


def test_starting_a_process_is_refused(fast_session):
    import subprocess

    from devtools.testing.fast import ProcessRefusedError

    with pytest.raises(ProcessRefusedError, match="starts no process"):
        subprocess.run(["true"], check=False)

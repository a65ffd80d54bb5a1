"""common.calls with the stub broker: the outbox's after-commit semantics and the send options."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction

from common import calls
from common.outbox.models import OutboxMessage
from contracts import sync

pytestmark = pytest.mark.skipif(
    "not __import__('importlib').util.find_spec('sync')", reason="the sync worker is not in this sandbox"
)


def test_sends_in_one_transaction_are_queued_in_order_at_the_commit(jobs):
    with transaction.atomic():
        for i in (3, 1, 2):
            sync.echo.delay(i)
    assert [args for _, args, _ in jobs.queued] == [[3], [1], [2]]


def test_sends_of_two_transactions_are_queued_each_at_its_own_commit(jobs):
    with transaction.atomic():
        sync.echo.delay(1)
    assert len(jobs.queued) == 1
    with transaction.atomic():
        sync.echo.delay(2)
        assert len(jobs.queued) == 1
    assert len(jobs.queued) == 2


def test_a_send_after_a_rolled_back_transaction_still_goes(jobs):
    with pytest.raises(KeyError), transaction.atomic():
        sync.echo.delay(1)
        raise KeyError
    sync.echo.delay(2)
    assert jobs.queued == [("sync.echo", [2], {})]


def test_a_caller_chosen_task_id_is_kept_once_per_transaction(jobs):
    with transaction.atomic():
        sync.echo.apply_async((1,), task_id="fixed-id")
        sync.echo.apply_async((1,), task_id="fixed-id")
    assert [m.id for m in jobs.messages] == ["fixed-id"]


def test_a_countdown_becomes_the_messages_eta(jobs):
    before = datetime.now(UTC)
    sync.echo.apply_async((1,), countdown=60)
    eta = datetime.fromisoformat(jobs.messages[0].headers["eta"])
    assert before + timedelta(seconds=59) < eta < before + timedelta(seconds=62)


def test_a_countdown_sent_in_a_transaction_counts_from_the_send(jobs):
    before = datetime.now(UTC)
    with transaction.atomic():
        sync.echo.apply_async((1,), countdown=60)
    eta = datetime.fromisoformat(jobs.messages[0].headers["eta"])
    assert before + timedelta(seconds=59) < eta < before + timedelta(seconds=62)


def test_an_option_json_cannot_hold_is_refused_inside_a_transaction(jobs):
    with pytest.raises(calls.InvalidTaskOptionsError), transaction.atomic():
        sync.echo.apply_async((1,), headers={"x": object()})
    assert jobs.queued == []


def test_the_outbox_is_empty_once_its_tasks_are_published(jobs):
    with transaction.atomic():
        calls.send_many(sync.echo, [(i,) for i in range(20)])
        assert OutboxMessage.objects.count() == 20
    assert OutboxMessage.objects.count() == 0
    assert len(jobs.queued) == 20


def test_a_fan_out_of_nothing_sends_nothing(jobs):
    assert calls.send_many(sync.echo, []) == []
    assert jobs.queued == []


def test_a_fan_out_refuses_a_caller_chosen_task_id(jobs):
    with pytest.raises(calls.InvalidTaskOptionsError):
        calls.send_many(sync.echo, [(1,)], task_id="x")


def test_a_signature_checks_its_arguments_when_made():
    from contracts.declare import InvalidTaskArgumentsError

    with pytest.raises(InvalidTaskArgumentsError):
        sync.echo.si("one")
    assert sync.create_account.s().task == "sync.create_account"  # its data comes from the previous step
    with pytest.raises(InvalidTaskArgumentsError):
        sync.create_account.si()  # an immutable signature gets nothing from a previous step


def test_a_task_sent_by_a_running_task_inside_its_transaction_waits_for_its_commit(jobs, gateway):
    # reconcile_payments sends process_payment from transaction.on_commit: nothing on rollback.
    from common.models import Appointment, Doctor, Patient, Payment
    from contracts import payments

    if not __import__("importlib").util.find_spec("payments"):
        pytest.skip("the payments worker is not in this sandbox")
    d = Doctor.objects.create(first_name="a", last_name="b", email="a@b.example")
    p = Patient.objects.create(name="p", email="p@b.example", gateway_customer_id="cus_ok")
    appt = Appointment.objects.create(doctor=d, patient=p, amount=10, scheduled_at=datetime.now(UTC))
    payment = Payment.objects.create(
        appointment=appt,
        idempotency_key="k-1",
        amount=10,
        currency="EUR",
        gateway_customer_id="cus_ok",
        status="processing",
    )
    Payment.objects.filter(pk=payment.pk).update(updated_at=datetime.now(UTC) - timedelta(hours=1))
    payments.reconcile_payments.delay()
    jobs.run_next()
    assert jobs.queued == [("payments.process_payment", [appt.pk], {})]

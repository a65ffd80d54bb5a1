"""Canvas (chain, group, chord) through the outbox, with the stub broker: Celery's own canvas
code builds the messages, `common.canvas` keeps them in the transaction's outbox rows and the
commit (or the relay) publishes them; the workers' receipt path then runs them."""

from __future__ import annotations

import time

import pytest
from celery import chord, group
from django.db import transaction

from common import publishing
from common.celery_app import current_app
from common.outbox import relay
from common.outbox.models import OutboxMessage
from contracts import emails, sync
from contracts.declare import InvalidTaskArgumentsError, UnknownTaskError

pytestmark = pytest.mark.skipif(
    "not all(__import__('importlib').util.find_spec(s) for s in ('sync', 'emails'))",
    reason="the sync and emails workers are not in this sandbox",
)

ADMIN = "admin@example.com"  # MailSettings' default


def flows():
    """One of each shape, and what each publishes at the send."""
    return {
        "chain": (lambda: (sync.echo.s(1) | sync.echo.s() | sync.echo.s()), ["sync.echo"]),
        "group": (lambda: group(sync.echo.s(i) for i in range(3)), ["sync.echo"] * 3),
        "chord": (
            lambda: chord((sync.echo.s(i) for i in (4, 5, 6)), emails.notify_admin.s()),
            ["sync.echo"] * 3,
        ),
    }


@pytest.mark.parametrize("shape", ["chain", "group", "chord"])
def test_a_canvas_sent_in_a_transaction_that_rolls_back_publishes_nothing(jobs, mailbox, shape):
    make, _ = flows()[shape]
    with pytest.raises(RuntimeError), transaction.atomic():
        make().apply_async()
        assert OutboxMessage.objects.count() > 0  # kept in the transaction, not published
        raise RuntimeError("the caller's work failed")
    assert jobs.published == [] and not OutboxMessage.objects.exists()
    jobs.run_all()
    assert jobs.outcomes == [] and mailbox == []


@pytest.mark.parametrize("shape", ["chain", "group", "chord"])
def test_a_canvas_sent_in_a_transaction_is_published_after_the_commit(jobs, shape):
    make, names = flows()[shape]
    with transaction.atomic():
        make().apply_async()
        assert jobs.published == []
        assert OutboxMessage.objects.count() == len(names)
    assert jobs.queued_names() == names
    assert all(m.headers["x_outbox"] is True for m in jobs.published)
    assert not OutboxMessage.objects.exists()


def test_a_committed_chain_runs_each_step_once_in_order(jobs):
    with transaction.atomic():
        result = (sync.echo.s(7) | sync.echo.s() | sync.echo.s()).apply_async()
    jobs.run_all()
    assert [(o.task, o.result) for o in jobs.outcomes] == [("sync.echo", 7)] * 3
    assert jobs.outcome(result.id).result == 7  # the chain's result is its last step's


def test_a_committed_group_runs_each_member_once(jobs):
    with transaction.atomic():
        result = group(sync.echo.s(i) for i in range(3)).apply_async()
    jobs.run_all()
    assert sorted(jobs.results("sync.echo")) == [0, 1, 2]
    assert [jobs.outcome(r.id).result for r in result.results] == [0, 1, 2]


def test_a_committed_chord_calls_back_once_with_every_result(jobs, mailbox):
    with transaction.atomic():
        result = chord((sync.echo.s(i) for i in (4, 5, 6)), emails.notify_admin.s()).apply_async()
    jobs.run_all()
    print("\nran:", [(o.task, o.result) for o in jobs.outcomes])
    assert sorted(jobs.results("sync.echo")) == [4, 5, 6]
    assert jobs.results("emails.notify_admin") == [{"status": "notified", "items": 3, "admin_notified": True}]
    assert jobs.outcome(result.id).task == "emails.notify_admin"
    assert [m.to for m in mailbox] == [[ADMIN]]
    assert all(str(i) in mailbox[0].body for i in (4, 5, 6))


def test_a_chord_sent_outside_a_transaction_is_published_at_once_and_completes(jobs, mailbox):
    chord((sync.echo.s(i) for i in (1, 2)), emails.notify_admin.s()).apply_async()
    assert jobs.queued_names() == ["sync.echo", "sync.echo"]
    assert not OutboxMessage.objects.exists()
    jobs.run_all()
    assert len(jobs.results("emails.notify_admin")) == 1 and len(mailbox) == 1


def test_a_chord_sent_while_the_broker_is_down_is_kept_whole_and_the_relay_completes_it(jobs, mailbox):
    app = current_app()
    publishing._broker_down_until[app.conf.broker_url] = time.monotonic() + 60  # a publish just failed
    try:
        result = chord((sync.echo.s(i) for i in (1, 2, 3)), emails.notify_admin.s()).apply_async()
        assert jobs.published == []
        kept = list(OutboxMessage.objects.order_by("pk"))
        assert [k.task_name for k in kept] == ["sync.echo"] * 3
        assert kept[-1].options["message"]["setup"][0][0] == "set_chord_size"  # done at the relay
    finally:
        publishing._broker_down_until.clear()
    done = relay.relay_once(app)
    assert (done.published, done.failed) == (3, 0) and not OutboxMessage.objects.exists()
    jobs.run_all()
    assert jobs.outcome(result.id).result == {"status": "notified", "items": 3, "admin_notified": True}
    assert len(mailbox) == 1


def test_a_canvas_whose_task_breaks_its_contract_keeps_and_sends_nothing(jobs):
    app = current_app()
    bad = group(sync.echo.s(1), app.signature("sync.echo", args=("not an int",)))
    with transaction.atomic():
        with pytest.raises(InvalidTaskArgumentsError):
            bad.apply_async()
        unknown = chord([sync.echo.s(1)], app.signature("emails.notify_admin"))
        with pytest.raises(UnknownTaskError):
            group(unknown, app.signature("sync.no_such_task")).apply_async()
    assert jobs.published == [] and not OutboxMessage.objects.exists()


def test_a_chain_a_worker_continues_is_celerys_own_publish(jobs):
    """A running task's next step is published by its worker as before, not kept."""
    (sync.echo.s(3) | sync.echo.s()).apply_async()
    assert len(jobs.published) == 1
    jobs.run_all()
    assert len(jobs.published) == 2 and "x_outbox" not in jobs.published[1].headers
    assert not OutboxMessage.objects.exists()

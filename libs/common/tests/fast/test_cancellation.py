"""Revokes kept in Redis (`common.cancellation`), in-process: what is recorded, and how long;
the intake refusing a revoked task wherever it waited; a task's start refusing one revoked
while it sat in a worker's prefetch. Real tasks of the sync service through the stub broker
and the worker's receipt path (`jobs`); the harness's in-memory Redis holds the revokes.

The same with real workers and a real Redis: tests/faults/test_revoke.py.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from celery import states
from celery.app.trace import trace_task
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult

from common import cancellation
from common.settings import get_settings, reset_settings_cache
from common.transport import revocation
from contracts import sync
from sync.app import app as sync_app


def test_a_revoke_is_kept_at_least_as_long_as_results(jobs, monkeypatch):
    task_id = str(uuid.uuid4())
    cancellation.revoke([task_id])
    key = revocation.KEY_PREFIX + task_id
    left = jobs.redis._expires[key] - time.monotonic()
    print(f"revoke kept for {left:.0f} s; RESULT_EXPIRES={get_settings().result_expires}")
    assert get_settings().result_expires <= left <= get_settings().task_revoke_retention
    assert json.loads(jobs.redis.get(key))["terminate"] is False
    assert cancellation.is_revoked(task_id)
    assert [r.task_id for r in cancellation.recent()] == [task_id]

    # A retention set below RESULT_EXPIRES is raised to it: a REVOKED result never outlives its revoke.
    monkeypatch.setenv("TASK_REVOKE_RETENTION", "10")
    reset_settings_cache()
    try:
        assert cancellation.retention() == get_settings().result_expires
    finally:
        monkeypatch.undo()
        reset_settings_cache()


@pytest.mark.parametrize("bad", ["", " ", "a b", "x" * 201, "line\nbreak", "\x00"])
def test_a_string_no_task_id_is_refused_and_nothing_is_recorded(jobs, bad):
    with pytest.raises(ValueError, match="not a task id"):
        cancellation.revoke(["fine-id", bad])
    assert not cancellation.is_revoked("fine-id")
    assert not cancellation.is_revoked(bad)


def test_the_list_forgets_revokes_past_the_retention(jobs):
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    now = time.time()
    revocation.record(jobs.redis, [old], retention=60, now=now - 120)  # index entry 2 min old
    revocation.record(jobs.redis, [new], retention=60, now=now)
    assert [r.task_id for r in cancellation.recent()] == [new]


def test_a_countdown_task_revoked_before_it_is_due_never_runs_and_ends_revoked(jobs):
    kept = sync.echo.apply_async((1,), countdown=10)
    revoked = sync.echo.apply_async((2,), countdown=10)
    cancellation.revoke([revoked.id])

    jobs.run_all()  # the harness runs delayed messages at once, as if due

    assert jobs.outcome(kept.id).state == states.SUCCESS
    assert jobs.outcome(revoked.id).state == states.REVOKED
    assert jobs.dead_letters == []  # dropped, not dead-lettered
    assert [m.id for m in jobs.ran] == [kept.id, revoked.id]
    result = AsyncResult(revoked.id, app=sync_app)
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=1)


def test_a_task_revoked_before_it_was_even_sent_never_runs(jobs):
    task_id = str(uuid.uuid4())
    cancellation.revoke([task_id])
    sync.echo.apply_async((1,), task_id=task_id)
    jobs.run_all()
    assert jobs.outcome(task_id).state == states.REVOKED


def test_a_hostile_task_id_is_never_looked_up_and_the_task_runs(jobs):
    long_id = "x" * 100_000  # a megabyte-ish header would be a megabyte EXISTS key
    sync.echo.apply_async((3,), task_id=long_id)
    jobs.run_all()
    assert jobs.outcome(long_id).state == states.SUCCESS


def _start(task_id: str, checked_ago: float | None) -> None:
    """Run sync.echo as a worker runs a message the intake checked `checked_ago` seconds ago."""
    request: dict[str, object] = {
        "id": task_id,
        "task": "sync.echo",
        "delivery_info": {"routing_key": "sync"},
    }
    if checked_ago is not None:
        request[revocation.CHECKED_HEADER] = time.monotonic() - checked_ago
    trace_task(sync_app.tasks["sync.echo"], task_id, (5,), {}, request, app=sync_app)


def test_a_task_revoked_while_it_waited_in_a_prefetch_ends_revoked_at_its_start(jobs):
    waited = str(uuid.uuid4())
    cancellation.revoke([waited])
    _start(waited, checked_ago=2.0)  # taken, checked, then held 2 s behind a long task
    assert sync_app.backend.get_state(waited) == states.REVOKED

    unchecked = str(uuid.uuid4())  # no intake stamp at all: always asked
    cancellation.revoke([unchecked])
    _start(unchecked, checked_ago=None)
    assert sync_app.backend.get_state(unchecked) == states.REVOKED


def test_a_task_starting_right_after_its_receipt_check_is_not_asked_again(jobs):
    """Within RECHECK_AFTER of the intake's check a revoke is one of a task under way: it runs."""
    task_id = str(uuid.uuid4())
    cancellation.revoke([task_id])
    _start(task_id, checked_ago=0.0)
    assert sync_app.backend.get_state(task_id) == states.SUCCESS
    print(f"a task starting within {revocation.RECHECK_AFTER} s of its receipt check costs no second EXISTS")


def test_terminate_broadcasts_celerys_revoke_and_reports_refusals(jobs, monkeypatch):
    sent = []

    def revoke(ids, **options):  # the broadcast's edge: no worker answers in-process
        sent.append((ids, options))
        return [{"reports@host": {"error": "remote control command 'revoke terminate=True' refused"}}]

    monkeypatch.setattr(sync_app.control, "revoke", revoke)
    monkeypatch.setattr(cancellation, "current_app", lambda: sync_app)
    task_id = str(uuid.uuid4())
    done = cancellation.revoke([task_id], terminate=True)
    assert sent == [([task_id], {"terminate": True, "signal": "SIGTERM", "reply": True, "timeout": 1.0})]
    assert list(done.refused) == ["reports@host"]
    assert cancellation.is_revoked(task_id)  # kept in Redis whatever the workers answered
    assert cancellation.recent()[0].terminate is True

    sent.clear()
    cancellation.revoke([str(uuid.uuid4())])
    assert sent == []  # no broadcast without terminate: the workers' refusal stays quiet


def test_an_inline_apply_never_asks_redis(network_attempts):
    """`apply()` runs in-process: nothing waited in a prefetch, so its start asks nobody."""
    assert sync_app.tasks["sync.echo"].apply((7,)).get() == 7
    assert network_attempts() == []

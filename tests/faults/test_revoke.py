"""Cancelling that sticks (issue 22, item 3): revokes kept in Redis, with real workers.

Celery's own revoke lives in workers' memory: sent while every worker is down, or for a task
waiting in the delayed set, it is lost and the task runs (celery#8888, celery#4300). Here
(`common.cancellation`):
- a report sent with a 10 s countdown and revoked while no worker runs never runs once a
  worker starts and its due time passes; its state is REVOKED (a report sent beside it with
  the same countdown runs, so the worker did take due messages);
- a running report asked to stop ends REVOKED within 2 s and leaves no partial file;
- a report already fetched into a worker's prefetch (behind a running one) and revoked there
  never starts: its start asks Redis again and it ends REVOKED.
Real reports workers (prefork, as deployed), the session's real Redis and database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import states
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult
from django.conf import settings

from common import cancellation
from common.celery_app import current_app
from common.models import Report, ReportItem
from common.transport.dead_letter_store import DeadLetters
from contracts import reports
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers

COUNTDOWN = 10.0


@pytest.fixture(scope="module")
def workers(data_dir: Path) -> Iterator[Workers]:
    """Reports workers, started by each test when it wants them (none runs at first)."""
    log_dir = data_dir / "revoke"
    log_dir.mkdir(exist_ok=True)
    w = Workers(log_dir)
    yield w
    w.stop()


def a_report(rows: int) -> Report:
    report = Report.objects.create(name=f"revoke probe ({rows} rows)")
    ReportItem.objects.bulk_create(
        (ReportItem(report=report, label=f"item {i}", value=Decimal(i % 10)) for i in range(rows)),
        batch_size=5000,
    )
    return report


def files_of(report: Report) -> list[Path]:
    return sorted(Path(settings.REPORTS_DIR).glob(f"report-{report.pk}.*"))


def test_a_countdown_revoked_while_every_worker_is_down_never_runs(workers: Workers, redis_client) -> None:
    assert not workers.procs, "no reports worker may run yet"
    app = current_app()
    dead_before = DeadLetters(redis_client).count("reports")
    kept_report, revoked_report = a_report(100), a_report(100)
    kept = reports.generate_large_report.apply_async((kept_report.pk,), countdown=COUNTDOWN)
    revoked = reports.generate_large_report.apply_async((revoked_report.pk,), countdown=COUNTDOWN)
    due = time.monotonic() + COUNTDOWN
    cancellation.revoke([revoked.id])  # no worker alive to hear a broadcast: only Redis has it
    revoked_at = time.monotonic()

    workers.start(["reports"])
    started_at = time.monotonic()
    wait_until(lambda: AsyncResult(kept.id, app=app).state == states.SUCCESS, timeout=COUNTDOWN + 60)
    ran_at = time.monotonic()
    wait_until(lambda: AsyncResult(revoked.id, app=app).state == states.REVOKED, timeout=30)
    revoked_state_at = time.monotonic()
    time.sleep(max(0.0, due + 2.0 - time.monotonic()))  # well past its due time

    result = AsyncResult(revoked.id, app=app)
    revoked_report.refresh_from_db()
    print(
        f"\nrevoked {COUNTDOWN - (due - revoked_at):.2f} s after the send with no worker up; worker "
        f"answered {started_at - revoked_at:.1f} s later; the twin ran {ran_at - due:+.2f} s from its due "
        f"time; the revoked one REVOKED {revoked_state_at - due:+.2f} s from its due time; its report: "
        f"{revoked_report.status}, {revoked_report.progress_total} rows counted, "
        f"files {files_of(revoked_report)}"
    )
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    # Never started: the task's first step marks the report running and counts its rows.
    assert (revoked_report.status, revoked_report.progress_total, revoked_report.task_id) == (
        "pending",
        0,
        "",
    )
    assert files_of(revoked_report) == []
    assert DeadLetters(redis_client).count("reports") == dead_before  # dropped, not dead-lettered
    assert Report.objects.get(pk=kept_report.pk).status == Report.Status.COMPLETE


def test_a_running_report_asked_to_stop_ends_revoked_within_2_s_without_its_partial_file(
    workers: Workers,
) -> None:
    if "reports" not in workers.procs:
        workers.start(["reports"])
    app = current_app()
    report = a_report(600_000)  # several seconds of writing, on a fast machine too
    result = reports.generate_large_report.delay(report.pk)
    partial = Path(settings.REPORTS_DIR) / f"report-{report.pk}.csv.part"

    def writing() -> bool:
        report.refresh_from_db()
        # Past its first progress update (row 1, at once): the partial file has rows on disk.
        return report.status == Report.Status.RUNNING and report.progress_current > 1 and partial.exists()

    wait_until(writing, timeout=60, interval=0.02)
    assert report.progress_current < report.progress_total, "the report finished before it could be stopped"
    size_before = partial.stat().st_size
    assert size_before > 0
    asked = time.monotonic()
    cancellation.revoke([result.id])
    while AsyncResult(result.id, app=app).state != states.REVOKED and time.monotonic() - asked < 10:
        time.sleep(0.01)
    took = time.monotonic() - asked
    left = files_of(report)  # REVOKED is stored once the task has cleaned up: nothing left now
    report.refresh_from_db()
    print(
        f"\nrunning report ({report.progress_total:,} rows) asked to stop at row "
        f"{report.progress_current:,}, partial file {size_before:,} bytes: REVOKED after {took:.2f} s; "
        f"report {report.status}; files left {left}"
    )
    assert AsyncResult(result.id, app=app).state == states.REVOKED
    assert took < 2.0
    assert left == []  # the partial file removed, no final file
    assert report.status == Report.Status.CANCELLED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)


def test_a_task_revoked_while_it_waits_in_a_workers_prefetch_never_starts(
    workers: Workers, redis_client
) -> None:
    workers.stop()  # one pool process reserving two messages: the second waits in the prefetch
    workers.start(
        ["reports"], env={"reports": {"WORKER_CONCURRENCY": "1", "WORKER_PREFETCH_MULTIPLIER": "2"}}
    )
    app = current_app()
    running_report, waiting_report = a_report(1_200_000), a_report(10)  # it must outlast the asking
    running = reports.generate_large_report.delay(running_report.pk)
    wait_until(
        lambda: Report.objects.get(pk=running_report.pk).progress_current > 1, timeout=60, interval=0.02
    )
    waiting = reports.generate_large_report.delay(waiting_report.pk)

    def fetched() -> bool:  # off its queue: taken (and checked) by the busy worker
        queued = [k for k in redis_client.scan_iter(match="reports*", _type="list")]
        return not any(waiting.id.encode() in item for k in queued for item in redis_client.lrange(k, 0, -1))

    wait_until(fetched, timeout=10, interval=0.02)
    cancellation.revoke([waiting.id])  # after the intake's check: only its start can refuse it now
    running_report.refresh_from_db()
    still_running = running_report.status == Report.Status.RUNNING  # so the waiting one waited
    # Taken off the queue a moment before Celery lists it as reserved: ask until it does.
    reserved: dict[str, Any] = {}
    held: list[str] = []
    deadline = time.monotonic() + 10
    while waiting.id not in held and time.monotonic() < deadline:
        # Reserved, or (prefork) already handed to the busy child's pipe, where Celery lists it
        # as active although its body cannot start before the running report's ends.
        inspect = app.control.inspect(timeout=0.5)
        reserved = {
            **(inspect.reserved() or {}),
            **{f"{k} (active)": v for k, v in (inspect.active() or {}).items()},
        }
        held = [t["id"] for tasks in reserved.values() for t in tasks if t["id"] != running.id]
    assert still_running, "the running report ended before the revoke: too soon for this test"
    cancellation.revoke([running.id])  # frees the pool process for the waiting one
    asked = time.monotonic()
    try:
        wait_until(
            lambda: AsyncResult(waiting.id, app=app).state == states.REVOKED, timeout=30, interval=0.02
        )
    except AssertionError:
        waiting_report.refresh_from_db()
        raise AssertionError(
            f"state {AsyncResult(waiting.id, app=app).state}, report {waiting_report.status}, "
            f"reserved {reserved}\n{workers.logs()}"
        ) from None
    took = time.monotonic() - asked
    waiting_report.refresh_from_db()
    print(
        f"\nreserved in the worker's prefetch: {waiting.id in held}; revoked there, it ended REVOKED "
        f"{took:.2f} s after the running report was stopped; its report {waiting_report.status}, "
        f"{waiting_report.progress_total} rows counted"
    )
    assert waiting.id in held, f"not in the worker's prefetch: {reserved}"
    assert AsyncResult(running.id, app=app).state == states.REVOKED
    assert (waiting_report.status, waiting_report.progress_total, waiting_report.task_id) == (
        "pending",
        0,
        "",
    )
    assert files_of(waiting_report) == []

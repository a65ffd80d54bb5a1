"""Workers keep their PostgreSQL connections between tasks, and recover when one is killed.

Celery's Django fixup would open a new connection for every task; `common.db_connections`
gives workers Django's CONN_MAX_AGE + health-check behaviour instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from contracts import sync
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def sync_worker(data_dir: Path) -> Iterator[None]:
    assert connection.vendor == "postgresql", "needs TEST_DATABASE=postgres (see tests/BUILD)"
    workers = Workers(data_dir)
    workers.start(["sync"], env={"sync": {"WORKER_CONCURRENCY": "2"}})
    try:
        yield
    finally:
        workers.stop()


def worker_backends() -> set[tuple[int, str]]:
    """The database sessions other than ours: the worker's, by (pid, start time)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start::text FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return set(cursor.fetchall())


def run_tasks(n: int) -> None:
    for _ in range(n):
        assert sync.health_check.delay().get(timeout=30)["database"] == "ok"


def test_tasks_reuse_the_workers_connections(sync_worker: None) -> None:
    run_tasks(10)
    before = worker_backends()
    assert 1 <= len(before) <= 2, before  # at most one per pool thread
    run_tasks(30)
    after = worker_backends()
    # The pool's second thread may open its own connection late; none is ever replaced.
    assert before <= after, "a connection was closed and reopened between tasks"
    assert len(after) <= 2, f"more sessions than pool threads: {after}"


def test_a_killed_connection_is_replaced_and_no_task_fails(sync_worker: None) -> None:
    run_tasks(5)
    with connection.cursor() as cursor:
        for pid, _ in worker_backends():
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    run_tasks(10)  # each task's health check finds a dead connection and reconnects
    assert worker_backends(), "the worker reconnected"

"""The recent-failures list: what Celery's tracer reports as a final failure, masked, capped.

Tasks run through Celery's own tracer (`Task.apply`), which sends `task_failure`, `task_retry`
or nothing (a `Reject`) as a worker would; the records land in the session's real Redis.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from celery import Celery
from celery.exceptions import Reject

from common.observability import recent_failures
from common.observability.recent_failures import KEEP, KEY, Failure, push, recent

PII = "ann.example@clinic.example"


class Declined(Exception):
    """A business outcome a task declares in `throws` (a declined card)."""


@pytest.fixture
def app() -> Iterator[Celery]:
    recent_failures.install()  # what common.celery_app does for a service's worker
    yield Celery("recent-failures-test", set_as_current=False)


def kept(client: redis.Redis, task_id: str) -> list[Failure]:
    return [f for f in recent(client, KEEP) if f.task_id == task_id]


def test_a_final_failure_is_kept_masked_and_without_its_arguments(
    app: Celery, redis_client: redis.Redis
) -> None:
    @app.task(name="tests.declined", shared=False)
    def declined(email: str, note: dict[str, Any]) -> None:
        raise RuntimeError(f"card of {email} declined")

    result = declined.apply(args=cast(Any, [PII]), kwargs={"note": {"name": "Ann Example"}})
    assert result.failed()
    [failure] = kept(redis_client, result.id)
    assert (failure.service, failure.task, failure.exception) == (
        "recent-failures-test",
        "tests.declined",
        "RuntimeError",
    )
    assert failure.message == "card of [email] declined"
    raw = b"".join(cast("list[bytes]", redis_client.lrange(KEY, 0, -1))).decode()
    assert PII not in raw and "Ann Example" not in raw


def test_retries_rejections_and_business_outcomes_are_not_failures(
    app: Celery, redis_client: redis.Redis
) -> None:
    attempts: list[int] = []

    @app.task(name="tests.flaky", bind=True, shared=False, max_retries=3, default_retry_delay=0)
    def flaky(self: Any) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(exc=ConnectionError("try again"))
        return "done"

    @app.task(name="tests.rejected", shared=False)
    def rejected() -> None:
        raise Reject("card declined: a business outcome", requeue=False)

    @app.task(name="tests.declined_card", shared=False, throws=(Declined,))
    def declined_card() -> None:
        raise Declined("card declined")

    retried = flaky.apply()
    assert retried.get() == "done" and len(attempts) == 3
    refused = rejected.apply()
    outcome = declined_card.apply()
    assert outcome.failed()
    assert [kept(redis_client, r.id) for r in (retried, refused, outcome)] == [[], [], []]

    @app.task(name="tests.exhausted", bind=True, shared=False, max_retries=1, default_retry_delay=0)
    def exhausted(self: Any) -> None:
        raise self.retry(exc=ConnectionError("still down"))

    gave_up = exhausted.apply()
    assert gave_up.failed()
    assert [f.exception for f in kept(redis_client, gave_up.id)] == ["ConnectionError"]


def test_the_list_keeps_the_newest_and_recent_reads_newest_first(redis_client: redis.Redis) -> None:
    ids = [uuid.uuid4().hex for _ in range(KEEP + 5)]
    for task_id in ids:
        push(redis_client, Failure(0.0, "sync", "sync.echo", task_id, "ValueError", "x"))
    assert redis_client.llen(KEY) == KEEP
    assert [f.task_id for f in recent(redis_client, 3)] == ids[::-1][:3]
    assert [f.task_id for f in recent(redis_client, 10_000)] == ids[::-1][:KEEP]
    redis_client.lpush(KEY, b"not json", json.dumps({"other": "shape"}))
    assert [f.task_id for f in recent(redis_client, 3)] == ids[::-1][:1]


def test_an_unreachable_redis_costs_the_record_not_the_task(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from devtools.ports import free_port

    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    monkeypatch.setattr(recent_failures, "_client", dead)

    @app.task(name="tests.boom", shared=False)
    def boom() -> None:
        raise ValueError("boom")

    result = boom.apply()
    assert result.failed() and isinstance(result.result, ValueError)
    assert any("Could not record failed task tests.boom" in r.getMessage() for r in caplog.records)

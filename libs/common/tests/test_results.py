"""Results: stored in one atomic round trip, and a finished task's SUCCESS is final."""

from __future__ import annotations

import threading
import uuid

from celery import states
from celery.result import AsyncResult

from common.celery_app import current_app
from common.results import RedisBackend


def backend() -> RedisBackend:
    b = current_app().backend
    assert isinstance(b, RedisBackend), f"result_backend selects {type(b)}, not common.results"
    return b


def test_a_late_failure_cannot_overwrite_success(redis_url: str) -> None:
    task_id = str(uuid.uuid4())
    backend().store_result(task_id, {"charged": 1}, states.SUCCESS)
    # A duplicate delivery (lost ack, worker killed after the work) finishing later:
    backend().store_result(task_id, {"exc_type": "RuntimeError"}, states.FAILURE)
    backend().store_result(task_id, None, states.STARTED)
    result = AsyncResult(task_id, app=current_app())
    assert result.state == states.SUCCESS and result.result == {"charged": 1}


def test_states_before_success_are_replaced_and_expire(redis_client) -> None:  # type: ignore[no-untyped-def]
    task_id = str(uuid.uuid4())
    backend().store_result(task_id, {"current": 5}, "PROGRESS")
    assert AsyncResult(task_id, app=current_app()).state == "PROGRESS"
    backend().store_result(task_id, 42, states.SUCCESS)
    assert AsyncResult(task_id, app=current_app()).get(timeout=5) == 42
    key = backend().get_key_for_task(task_id)
    assert 0 < redis_client.ttl(key) <= current_app().conf.result_expires


def test_a_waiting_caller_is_woken_by_the_store(redis_url: str) -> None:
    """`.get()` on Redis waits on pub/sub: the script must publish as Celery's store did."""
    task_id = str(uuid.uuid4())
    got: list[object] = []
    result = AsyncResult(task_id, app=current_app())
    waiter = threading.Thread(target=lambda: got.append(result.get(timeout=10)))
    waiter.start()
    threading.Event().wait(0.5)  # the waiter subscribes before the result arrives
    backend().store_result(task_id, "done", states.SUCCESS)
    waiter.join(timeout=15)
    assert got == ["done"]

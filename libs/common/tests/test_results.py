"""Results: stored in one atomic round trip, and a finished task's SUCCESS is final."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from celery import Celery, states
from celery.exceptions import ImproperlyConfigured
from celery.result import AsyncResult

from common.celery_app import current_app
from common.celery_config import celery_config
from common.settings import get_settings
from common.transport.results import RedisBackend


def backend() -> RedisBackend:
    b = current_app().backend
    assert isinstance(b, RedisBackend), f"result_backend selects {type(b)}, not common.transport.results"
    return b


def test_a_late_failure_cannot_overwrite_success(redis_url: str) -> None:
    task_id = str(uuid.uuid4())
    backend().store_result(task_id, {"charged": 1}, states.SUCCESS)
    # A duplicate delivery (lost ack, worker killed after the work) finishing later:
    backend().store_result(task_id, {"exc_type": "RuntimeError"}, states.FAILURE)
    backend().store_result(task_id, None, states.STARTED)
    result = AsyncResult(task_id, app=current_app())
    assert result.state == states.SUCCESS and result.result == {"charged": 1}


def test_states_before_success_are_replaced_and_expire(redis_client) -> None:
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


def test_success_stays_final_when_cjson_cannot_decode_it(redis_url: str) -> None:
    """Valid JSON that Redis' cjson refuses (a lone surrogate) must still count as SUCCESS."""
    task_id = str(uuid.uuid4())
    backend().store_result(task_id, "\ud800 undecodable in Lua", states.SUCCESS)
    backend().store_result(task_id, {"exc_type": "RuntimeError"}, states.FAILURE)
    backend().store_result(task_id, None, states.STARTED)
    assert AsyncResult(task_id, app=current_app()).state == states.SUCCESS


def app_with(**overrides: Any) -> Celery:
    """A fresh app with the platform's configuration (the session's Redis) plus `overrides`."""
    app = Celery("results-settings", set_as_current=False)
    app.conf.update(celery_config(get_settings()), **overrides)
    return app


# Each of these hides SUCCESS from the Lua check (Celery's own backend decodes in Python):
# compressed bytes or msgpack/yaml/pickle are not JSON to cjson, so a late FAILURE replaced
# SUCCESS. msgpack is not even installed: it must still be this error, not a KeyError.
REFUSED = [
    ({"result_compression": "gzip"}, "result_compression='gzip'"),
    ({"result_compression": "zlib"}, "result_compression='zlib'"),
    ({"result_compression": "bzip2"}, "result_compression='bzip2'"),
    ({"result_serializer": "msgpack"}, "result_serializer='msgpack'"),
    ({"result_serializer": "yaml"}, "result_serializer='yaml'"),
    ({"result_serializer": "pickle"}, "result_serializer='pickle'"),
    ({"result_accept_content": ["json", "pickle"]}, "result_accept_content="),
    ({"result_accept_content": ["application/x-yaml"]}, "result_accept_content="),
    ({"result_accept_content": None, "accept_content": ["json", "msgpack"]}, "accept_content "),
]


@pytest.mark.parametrize(("overrides", "named"), REFUSED, ids=lambda v: str(v))
def test_settings_that_would_let_success_be_overwritten_are_refused(
    redis_url: str, overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        app_with(**overrides).backend  # noqa: B018 - building the backend is the check
    message = str(refused.value)
    assert named in message and "JSON" in message, message


@pytest.mark.parametrize(
    "overrides",
    [{}, {"result_compression": None}, {"result_accept_content": ["application/json"]}],
    ids=["platform", "no-compression", "json-mime"],
)
def test_accepted_settings_keep_success_final_against_real_redis(
    redis_url: str, overrides: dict[str, Any]
) -> None:
    app = app_with(**overrides)
    b = app.backend
    assert isinstance(b, RedisBackend)
    task_id = str(uuid.uuid4())
    b.store_result(task_id, {"charged": 1}, states.SUCCESS)
    b.store_result(task_id, {"exc_type": "RuntimeError"}, states.FAILURE)
    b.store_result(task_id, None, states.STARTED)
    b._cache.clear()
    assert AsyncResult(task_id, app=app).state == states.SUCCESS


# --- a SUCCESS settles its message in the same step ---------------------------------------
from celery.app.task import Context  # noqa: E402

from common.transport.broker import ownership, scripts  # noqa: E402


@pytest.fixture()
def running(redis_client, monkeypatch):
    """This process as a worker holding one fetched message per task id it is given."""
    with current_app().connection_for_write() as conn:
        params = conn.default_channel._connparams()
    owner = ownership.Owner(params, dead_after=10, tick=3600)
    owner._stop.set()  # no heartbeat thread: nothing but the store may touch the hash
    monkeypatch.setattr(ownership, "_owner", owner)

    def hold(task_id: str) -> str:
        redis_client.lpush("t-settle", f'{{"properties": {{"delivery_tag": "tag-{task_id}"}}}}')
        _, _, tag = redis_client.eval(
            scripts.FETCH, 2, owner.inflight_key, "t-settle", ownership.SEP, "b:", 1
        )
        owner.took(tag.decode(), task_id)
        return tag.decode()

    yield owner, hold
    redis_client.delete(owner.inflight_key)


def test_a_stored_success_acknowledges_its_message_in_the_same_step(redis_client, running) -> None:
    """No crash can fall between storing a SUCCESS and the ack, so the task cannot run twice."""
    owner, hold = running
    task_id = str(uuid.uuid4())
    tag = hold(task_id)
    backend().store_result(task_id, 42, states.SUCCESS, request=Context(id=task_id))
    assert redis_client.hget(owner.inflight_key, tag) is None, "the message is still owed a run"
    assert tag not in owner.held, "Celery's ack after the store must cost nothing"
    assert AsyncResult(task_id, app=current_app()).get(timeout=5) == 42
    # A second copy finishing after it: its SUCCESS is not stored, its message is settled.
    tag = hold(task_id)
    backend().store_result(task_id, 43, states.SUCCESS, request=Context(id=task_id))
    assert redis_client.hlen(owner.inflight_key) == 0
    assert AsyncResult(task_id, app=current_app()).get(timeout=5) == 42


@pytest.mark.parametrize(
    ("state", "request_fields"),
    [(states.FAILURE, {}), ("PROGRESS", {}), (states.SUCCESS, {"chord": {"task": "callback"}})],
    ids=["failure", "progress", "chord part"],
)
def test_other_stores_leave_the_ack_to_celery(redis_client, running, state, request_fields) -> None:
    """A failure may still be retried or requeued, and a chord part must count itself into its
    chord after the store: their messages stay held until Celery acknowledges them."""
    owner, hold = running
    task_id = str(uuid.uuid4())
    tag = hold(task_id)
    backend().store_result(task_id, {"x": 1}, state, request=Context(id=task_id, **request_fields))
    assert redis_client.hget(owner.inflight_key, tag) is not None and tag in owner.held


def test_a_result_whose_notification_was_missed_is_still_returned(redis_client) -> None:
    """`.get()` subscribes when it starts waiting; a result stored without a notification it
    sees (published while that subscription settled) is read again within a second."""
    task_id = str(uuid.uuid4())
    got: list[object] = []
    result = AsyncResult(task_id, app=current_app())
    waiter = threading.Thread(target=lambda: got.append(result.get(timeout=10)))
    waiter.start()
    threading.Event().wait(0.5)  # waiting: subscribed, the stored result read once (none yet)
    meta = {"status": states.SUCCESS, "result": "late", "traceback": None, "children": [], "task_id": task_id}
    redis_client.set(backend().get_key_for_task(task_id), backend().encode(meta))  # no PUBLISH
    started = time.monotonic()
    waiter.join(timeout=15)
    assert got == ["late"], "the waiter missed a stored result"
    assert time.monotonic() - started < 2.0

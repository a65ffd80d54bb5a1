"""The transactional outbox, in one process: real Redis, a real database, a closed port.

Inside `transaction.atomic()` a task is published after the commit and never on rollback;
outside one, a broker outage keeps the task in the outbox instead of losing it, and the
relay publishes it later under the same task id with the `x_outbox` header.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from celery.signals import after_task_publish
from django.db import transaction

from common import calls, publishing
from common.celery_app import current_app
from common.celery_config import celery_config
from common.outbox import relay
from common.outbox.models import OutboxMessage
from common.settings import load_settings
from contracts import sync
from contracts.declare import ServiceContracts
from devtools.local_redis import LocalRedis
from devtools.ports import free_port


def app_for(url: str) -> Celery:
    app = Celery("outbox-test")
    app.conf.update(celery_config(load_settings(redis_url=url)))
    return app


@pytest.fixture(scope="module")
def dead_app() -> Celery:
    """A producer whose broker port is closed: every publish fails within seconds."""
    return app_for(f"redis://:s3cret@127.0.0.1:{free_port()}/0")


@pytest.fixture(autouse=True)
def clean(redis_client) -> None:
    redis_client.flushdb()
    OutboxMessage.objects.all().delete()


class Published(list[dict[str, Any]]):
    """Headers of every message this process published, in order (and their bodies)."""

    bodies: list[Any]

    def ids(self) -> list[str]:
        return [h["id"] for h in self]


@pytest.fixture
def published() -> Iterator[Published]:
    seen = Published()
    seen.bodies = []

    def record(
        sender: str | None = None, headers: dict[str, Any] | None = None, body: Any = None, **_: Any
    ) -> None:
        seen.append(dict(headers or {}))
        seen.bodies.append(body)

    after_task_publish.connect(record, weak=False)
    yield seen
    after_task_publish.disconnect(record)


def kept() -> list[OutboxMessage]:
    return list(OutboxMessage.objects.order_by("pk"))


# --- inside a transaction ------------------------------------------------------------------


def test_a_task_sent_in_a_transaction_is_published_after_the_commit(published: Published) -> None:
    with transaction.atomic():
        result = sync.echo.delay(7)
        assert published == [], "published before the commit"
        (row,) = kept()  # written in the caller's transaction
        assert (row.task_id, row.task_name, row.queue, row.args, row.kwargs) == (
            result.id,
            "sync.echo",
            "sync",
            [7],
            {},
        )
    assert published.ids() == [result.id]
    assert published[0]["x_outbox"] is True and published[0]["task"] == "sync.echo"
    assert kept() == [], "a published row is deleted"


def test_a_rolled_back_transaction_sends_nothing_and_keeps_nothing(published: Published) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        sync.echo.delay(1)
        raise RuntimeError("the caller's work failed")
    assert published == [] and kept() == []


def test_a_rolled_back_savepoint_drops_only_its_own_tasks(published: Published) -> None:
    with transaction.atomic():
        outer = sync.echo.delay(1)
        with pytest.raises(RuntimeError), transaction.atomic():
            sync.echo.delay(2)
            raise RuntimeError("inner work failed")
        last = sync.echo.delay(3)
    assert published.ids() == [outer.id, last.id]
    assert kept() == []


def test_a_fan_out_in_a_transaction_is_published_once_each_after_the_commit(published: Published) -> None:
    with transaction.atomic():
        results = [sync.echo.delay(i) for i in range(50)]
        assert published == [] and len(kept()) == 50
    assert published.ids() == [r.id for r in results], "each once, in the order sent"
    assert kept() == []


def test_a_task_id_chosen_by_the_caller_is_kept_and_published_once(published: Published) -> None:
    with transaction.atomic():
        first = sync.echo.apply_async((1,), task_id="order-42-echo")
        again = sync.echo.apply_async((1,), task_id="order-42-echo")
        sync.echo.delay(2)  # the caller's transaction is still usable
    assert first.id == again.id == "order-42-echo"
    assert published.ids().count("order-42-echo") == 1 and len(published) == 2


def test_outbox_false_publishes_at_once_even_in_a_transaction(published: Published) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        result = calls.apply_async("sync.echo", (1,), outbox=False)
        assert published.ids() == [result.id]
        raise RuntimeError("rolled back, but the task is already out")
    assert "x_outbox" not in published[0] and kept() == []


def test_a_countdown_counts_from_the_send_not_from_a_later_publish(published: Published) -> None:
    sent = datetime.now(UTC)
    with transaction.atomic():
        result = sync.echo.apply_async((1,), countdown=60, priority=3, expires=600)
        (row,) = kept()
        eta = datetime.fromisoformat(row.options["eta"])
        assert sent + timedelta(seconds=59) < eta < sent + timedelta(seconds=62)
        assert datetime.fromisoformat(row.options["expires"]) > sent + timedelta(seconds=599)
        assert row.options["priority"] == 3 and "countdown" not in row.options
    (headers,) = published
    assert headers["id"] == result.id and datetime.fromisoformat(headers["eta"]) == eta


def test_an_option_json_cannot_hold_is_refused_before_anything_is_kept(published: Published) -> None:
    with transaction.atomic():
        with pytest.raises(calls.InvalidTaskOptionsError, match="shadow=object cannot be kept.*outbox=False"):
            sync.echo.apply_async((1,), shadow=object())
        with pytest.raises(calls.InvalidTaskOptionsError, match="ISO 8601"):
            sync.echo.apply_async((1,), eta="next tuesday")
        assert kept() == []
    assert published == []


def test_transport_options_are_used_but_not_stored(published: Published) -> None:
    with transaction.atomic():
        sync.echo.apply_async((1,), retry=False, add_to_parent=False)
        (row,) = kept()
        assert row.options == {}
    assert len(published) == 1


def test_broker_down_at_commit_keeps_the_tasks_for_the_relay(
    dead_app: Celery, published: Published, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), transaction.atomic():
        result = calls.apply_async("sync.echo", (5,), app=dead_app)
    (row,) = kept()
    assert row.task_id == result.id and row.attempts in (0, 1)
    assert "kept in the outbox" in caplog.text and "s3cret" not in caplog.text
    assert relay.relay_once(current_app()).published == 1
    assert published.ids() == [result.id] and published[0]["x_outbox"] is True
    assert kept() == []


# --- outside a transaction -----------------------------------------------------------------


def test_outside_a_transaction_a_task_is_published_directly_without_the_outbox(
    published: Published,
) -> None:
    result = sync.echo.delay(3)
    assert published.ids() == [result.id] and "x_outbox" not in published[0]
    assert kept() == []


def test_broker_down_at_send_keeps_the_task_and_warns(
    dead_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="common.calls"):
        result = calls.apply_async("emails.send_welcome_email", (11,), app=dead_app)
    assert time.monotonic() - started < 30
    (row,) = kept()
    assert (row.task_id, row.task_name, row.args) == (result.id, "emails.send_welcome_email", [11])
    (warning,) = (r for r in caplog.records if r.name == "common.calls")
    assert warning.levelno == logging.WARNING
    text = warning.getMessage()
    assert f"emails.send_welcome_email[{result.id}] kept in the outbox" in text
    assert "unreachable" in text and "relay_outbox" in text and "s3cret" not in text


def test_during_an_outage_later_sends_are_kept_at_once_not_after_a_timeout(dead_app: Celery) -> None:
    calls.apply_async("sync.echo", (0,), app=dead_app)  # finds the broker down
    started = time.monotonic()
    for i in range(100):
        calls.apply_async("sync.echo", (i,), app=dead_app)
    assert time.monotonic() - started < 3, "each send waited for the broker"
    assert len(kept()) == 101


def test_a_send_that_can_be_neither_published_nor_kept_raises(dead_app: Celery) -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # the database refuses the write: a real error, not a mock
        cursor.execute("ALTER TABLE outbox_outboxmessage RENAME TO outbox_gone")
    try:
        with pytest.raises(calls.BrokerUnavailableError, match="could not keep it in the outbox either"):
            calls.apply_async("sync.echo", (1,), app=dead_app)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE outbox_gone RENAME TO outbox_outboxmessage")


def test_sends_publish_directly_again_once_the_broker_is_back(
    monkeypatch: pytest.MonkeyPatch, published: Published
) -> None:
    monkeypatch.setattr(publishing, "BROKER_RETRY_AFTER", 0.5)
    redis = LocalRedis().start()
    app = app_for(redis.url)
    try:
        redis.stop()
        down = calls.apply_async("sync.echo", (1,), app=app)
        assert [r.task_id for r in kept()] == [down.id] and published == []
        redis = LocalRedis(port=redis.port).start()
        time.sleep(0.6)
        up = calls.apply_async("sync.echo", (2,), app=app)
        assert published.ids() == [up.id] and "x_outbox" not in published[0]
        assert [r.task_id for r in kept()] == [down.id], "only the task sent during the outage waits"
        assert relay.relay_once(app).published == 1
        assert published.ids() == [up.id, down.id]
    finally:
        redis.stop()


# --- the relay -----------------------------------------------------------------------------


def test_the_relay_publishes_oldest_first_in_batches_with_the_same_task_ids(
    dead_app: Celery, published: Published
) -> None:
    sent = [calls.apply_async("sync.echo", (i,), app=dead_app).id for i in range(7)]
    done = relay.relay_once(current_app(), batch_size=3)
    assert (done.published, done.failed, done.broker_down) == (7, 0, None)
    assert published.ids() == sent
    assert all(h["x_outbox"] is True for h in published)
    assert kept() == []


def test_the_relay_stops_a_pass_while_the_broker_is_down_and_records_why(dead_app: Celery) -> None:
    for i in range(3):
        calls.apply_async("sync.echo", (i,), app=dead_app)
    done = relay.relay_once(dead_app)
    assert done.published == 0 and "unreachable" in (done.broker_down or "")
    rows = kept()
    # One batch, one round trip: each of its rows records the outage, none is lost.
    assert [r.attempts for r in rows] == [1, 1, 1]
    assert all("unreachable" in r.last_error and "s3cret" not in r.last_error for r in rows)


def test_a_row_that_cannot_be_published_does_not_hold_up_the_others(
    dead_app: Celery, published: Published
) -> None:
    good = [calls.apply_async("sync.echo", (i,), app=dead_app).id for i in range(2)]
    OutboxMessage.objects.filter(task_id=good[0]).update(options={"eta": "garbled"})
    done = relay.relay_once(current_app())
    assert (done.published, done.failed) == (1, 1)
    assert published.ids() == [good[1]]
    (stuck,) = kept()
    assert stuck.task_id == good[0] and stuck.attempts == 1 and "ValueError" in stuck.last_error


def test_kept_arguments_reach_the_worker_with_their_types(dead_app: Celery, published: Published) -> None:
    from kombu.utils.json import dumps, loads

    @ServiceContracts("emails").task
    def remind_at(data: dict) -> None:
        """A task taking a datetime inside a dict."""

    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    calls.apply_async(remind_at, ({"at": when, "n": 1},), app=dead_app)
    (row,) = kept()
    assert row.args == [{"at": {"__type__": "datetime", "__value__": when.isoformat()}, "n": 1}]
    relay.relay_once(current_app())
    args, kwargs, _ = loads(dumps(published.bodies[0]))  # as the worker decodes the message
    assert (args, kwargs) == ([{"at": when, "n": 1}], {})


def test_the_relay_loop_logs_an_outage_once_and_publishes_when_the_broker_is_back(
    dead_app: Celery, published: Published, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    kept_ids = [calls.apply_async("sync.echo", (i,), app=dead_app).id for i in range(2)]
    stop = threading.Event()
    loop = threading.Thread(target=relay.run, args=(dead_app,), kwargs={"interval": 0.05, "stop": stop})
    with caplog.at_level(logging.WARNING, logger="common.outbox.relay"):
        loop.start()
        time.sleep(1.5)
        stop.set()
        loop.join(30)
    assert not loop.is_alive()
    assert [r.task_id for r in kept()] == kept_ids and published == []
    outage = [r for r in caplog.records if "cannot publish" in r.getMessage()]
    assert len(outage) == 1, "one warning per outage, not one per pass"
    assert kept()[0].attempts >= 1

    stop = threading.Event()
    loop = threading.Thread(target=relay.run, args=(current_app(),), kwargs={"interval": 0.05, "stop": stop})
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while kept() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        loop.join(30)
    assert published.ids() == kept_ids and kept() == []


# --- fan-outs: send_many -------------------------------------------------------------------
def queued_messages(redis_client) -> list[dict]:
    import json

    keys = [k for k in redis_client.keys("sync*") if k.decode().split("\x06\x16")[0] == "sync"]
    return [json.loads(raw) for key in keys for raw in redis_client.lrange(key, 0, -1)]


def queued_ids(redis_client) -> list[str]:
    return [m["headers"]["id"] for m in queued_messages(redis_client)]


def test_send_many_publishes_every_call_once_and_keeps_nothing(redis_client) -> None:
    results = calls.send_many(sync.echo, [(i,) for i in range(1200)])  # three pipelined batches
    ids = [r.id for r in results]
    assert len(set(ids)) == 1200
    assert sorted(queued_ids(redis_client)) == sorted(ids)
    assert not kept(), "published at once outside a transaction: nothing kept"
    # Marked as outbox copies: if a batch fails half-sent, its rows are kept and sent again,
    # and the workers drop the second copy of each task id.
    assert all(m["headers"].get("x_outbox") for m in queued_messages(redis_client))


def test_a_canvas_in_one_round_trip_publishes_a_whole_group_at_its_end(redis_client) -> None:
    from celery import group

    from common.transport.broker.round_trip import ROUND_TRIP_MESSAGES

    with calls.one_round_trip():
        result = group(sync.echo.s(i) for i in range(50)).apply_async()  # its own producer
        assert queued_ids(redis_client) == [], "nothing leaves before the block ends"
    assert sorted(queued_ids(redis_client)) == sorted(r.id for r in result.results)

    # A long fan-out leaves in round trips of ROUND_TRIP_MESSAGES while the block goes on.
    n = 2 * ROUND_TRIP_MESSAGES + 50
    with calls.one_round_trip():
        result = group(sync.echo.s(i) for i in range(n)).apply_async()
        assert len(queued_ids(redis_client)) == 50 + 2 * ROUND_TRIP_MESSAGES
    assert len(queued_ids(redis_client)) == 50 + n


def test_send_many_sends_none_unless_every_call_fits(redis_client) -> None:
    with pytest.raises(calls.InvalidTaskArgumentsError, match="argument 'value'"):
        calls.send_many(sync.echo, [(1,), (2,), ("three",)])
    assert queued_ids(redis_client) == [] and not kept()


def test_send_many_in_a_transaction_waits_for_the_commit(redis_client) -> None:
    with transaction.atomic():
        calls.send_many(sync.echo, [(i,) for i in range(10)])
        assert queued_ids(redis_client) == [] and len(kept()) == 10
    assert len(queued_ids(redis_client)) == 10 and not kept()
    with pytest.raises(RuntimeError), transaction.atomic():
        calls.send_many(sync.echo, [(i,) for i in range(10)])
        raise RuntimeError("rolled back")
    assert len(queued_ids(redis_client)) == 10 and not kept(), "a rollback sends nothing"


def test_send_many_keeps_everything_while_the_broker_is_down(
    dead_app: Celery, redis_client
) -> None:
    ids = [r.id for r in calls.send_many(sync.echo, [(i,) for i in range(30)], app=dead_app)]
    assert [r.task_id for r in kept()] == ids, "every call kept, in order"
    assert relay.relay_once(current_app()).published == 30  # the broker is back: the relay sends them
    assert sorted(queued_ids(redis_client)) == sorted(ids) and not kept()

"""A producer's result subscriptions are released, so a long-lived one's count stays flat.

Issue 24: Celery's backend unsubscribes from a result's channel when the result is ready,
forgotten, or its result object goes away; ours must too (`common.transport.results`). The
count is read three ways: Redis' own (PUBSUB CHANNELS / NUMSUB, what another connection
sees), the consumer's channel set (`subscribed_to`) and what the backend keeps per result
(waiters, unclaimed ready results). A real `sync` worker runs the tasks.

The loop makes 2,000 `.get()`s (about 8 to 16 s here); the issue's full measurement is
`RESULT_SUBSCRIPTION_GETS=10000` (80 s on a loaded 2-core box, every count 0 throughout).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout

from common.celery_app import current_app
from common.celery_config import celery_config
from common.settings import get_settings
from devtools.testing.workers import running

GETS = int(os.environ.get("RESULT_SUBSCRIPTION_GETS", "2000"))
CHECK_EVERY = max(1, GETS // 10)
CHANNELS = "celery-task-meta-*"


@pytest.fixture(scope="module")
def worker(data_dir: Path) -> Iterator[str]:
    with running(data_dir, "result-subscriptions", ["sync"]) as names:
        yield names["sync"]


def counts(app: Celery, redis_client: Any) -> dict[str, int]:
    backend: Any = app.backend
    consumer = backend.result_consumer
    pubsub = consumer._pubsub
    return {
        "redis channels": len(redis_client.pubsub_channels(CHANNELS)),
        "subscribed_to": len(consumer.subscribed_to),
        # redis-py's own record: a channel stays until its UNSUBSCRIBE reply has been read
        "redis-py channels": len(pubsub.channels) if pubsub is not None else 0,
        "waiters": sum(len(m) for m in backend._pending_results),
        "unclaimed results": backend._pending_messages.total,
    }


def numsub(redis_client: Any, app: Celery, task_id: str) -> int:
    channel = app.backend.get_key_for_task(task_id)
    return int(dict(redis_client.pubsub_numsub(channel))[channel])


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    """An UNSUBSCRIBE is written, not awaited: give Redis a moment to have read it."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_one_get_after_another_leaves_no_subscription(worker: str, redis_client: Any) -> None:
    from contracts import sync

    app = current_app()
    before = counts(app, redis_client)
    assert before["redis channels"] == 0, before
    seen: list[tuple[int, dict[str, int]]] = []
    started = time.monotonic()
    for i in range(1, GETS + 1):
        result = sync.echo.delay(i)
        assert result.get(timeout=20) == i
        if i % CHECK_EVERY == 0:
            released = lambda last=result.id: numsub(redis_client, app, last) == 0  # noqa: E731
            assert eventually(released), "the last get kept its channel"
            seen.append((i, counts(app, redis_client)))
    elapsed = time.monotonic() - started
    print(f"\n{GETS} gets in {elapsed:.1f} s ({GETS / elapsed:.0f}/s); before: {before}")
    for i, c in seen:
        print(f"  after {i:>6} gets: {c}")
    for i, c in seen:
        assert c["redis channels"] == 0 and c["subscribed_to"] == 0 and c["waiters"] == 0, (i, c)
        # at most the last few gets' replies not read yet (each get reads what has arrived)
        assert c["redis-py channels"] <= 3, (i, c)
        # Celery buffers a ready result nobody claimed; a late copy of one already returned
        # must not be kept (it was one more per few hundred gets before issue 24).
        assert c["unclaimed results"] <= before["unclaimed results"], (i, c)


def test_gets_of_finished_results_leave_no_replies_behind(worker: str, redis_client: Any) -> None:
    """A `.get()` whose result is already stored never waits on its connection: the replies
    to its SUBSCRIBE and UNSUBSCRIBE must still be read, or redis-py keeps every channel."""
    from common import calls
    from contracts import sync

    app = current_app()
    results = calls.send_many(sync.echo, [(i,) for i in range(300)])
    assert eventually(lambda: all(r.state == "SUCCESS" for r in results[-5:]), timeout=60)
    for i, result in enumerate(results):
        assert result.get(timeout=20) == i
    c = counts(app, redis_client)
    print(f"\nafter 300 gets of finished results: {c}")
    assert c["redis channels"] == 0 and c["subscribed_to"] == 0 and c["redis-py channels"] <= 3, c


def test_forget_releases_the_subscription_of_a_get_that_timed_out(worker: str, redis_client: Any) -> None:
    from contracts import sync

    app = current_app()
    result = sync.echo.apply_async((7,), countdown=60)  # not done for a minute
    with pytest.raises(ResultTimeout):
        result.get(timeout=0.5)
    # A timed-out get keeps waiting (Celery, issue #4925): subscribed until ready or forgotten.
    assert numsub(redis_client, app, result.id) == 1
    assert app.backend.get_key_for_task(result.id) in app.backend.result_consumer.subscribed_to
    result.forget()
    assert eventually(lambda: numsub(redis_client, app, result.id) == 0), "forget kept the channel"
    assert counts(app, redis_client)["subscribed_to"] == 0
    assert counts(app, redis_client)["waiters"] == 0
    app.control.revoke(result.id)


@pytest.fixture()
def stock_app(redis_url: str) -> Iterator[Celery]:
    """The platform's configuration with Celery's subscribe-at-send (`subscribe_on_send`)."""
    app = Celery("subscribe-on-send", set_as_current=False)
    conf = celery_config(get_settings())
    options = {**conf.get("result_backend_transport_options", {}), "subscribe_on_send": True}
    app.conf.update(conf, result_backend_transport_options=options)
    yield app
    app.backend.result_consumer.stop()


def test_subscribe_on_send_keeps_celerys_own_semantics(
    worker: str, redis_client: Any, stock_app: Celery
) -> None:
    """Celery's integration tests `test_asyncresult_{get,forget}_cancels_subscription`,
    and the third release: the result object going away without a get."""
    app = stock_app
    # get: subscribed from the send, released when the result is returned.
    got = app.send_task("sync.echo", (3,))
    assert numsub(redis_client, app, got.id) == 1, "not subscribed at send"
    assert got.get(timeout=20) == 3
    assert eventually(lambda: numsub(redis_client, app, got.id) == 0), "get kept the channel"
    # forget, before the task ran.
    forgotten = app.send_task("sync.echo", (4,), countdown=60)
    assert numsub(redis_client, app, forgotten.id) == 1
    forgotten.forget()
    assert eventually(lambda: numsub(redis_client, app, forgotten.id) == 0), "forget kept the channel"
    app.control.revoke(forgotten.id)
    # the result object goes away, never waited for.
    dropped = app.send_task("sync.echo", (5,), countdown=60)
    task_id = dropped.id
    assert numsub(redis_client, app, task_id) == 1
    del dropped
    gc.collect()
    assert eventually(lambda: numsub(redis_client, app, task_id) == 0), "a collected result kept its channel"
    app.control.revoke(task_id)
    assert counts(app, redis_client)["subscribed_to"] == 0

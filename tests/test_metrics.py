"""Prometheus metrics: a real sync worker with METRICS_PORT serves what its tasks did.

Both pools the services use: threads (the signals fire in the worker's main process) and
prefork (they fire in the pool's children, summed through prometheus_client's multiprocess
files). The queue collector is also checked alone against Redis, on a queue no worker reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common.observability.metrics import RedisCollector
from common.observability.queues import queue_keys
from common.transport.broker.scripts import BELL_PREFIX, CONSUMERS, DELAYED, OWNERS
from common.transport.dead_letter_store import QUEUE_PREFIX, DeadLetters
from contracts import sync
from devtools.ports import free_port
from devtools.testing.prometheus import Samples, scrape_until, total, worker_metrics
from devtools.testing.workers import Workers


def wait_until(port: int, ok: Callable[[Samples], bool], timeout: float = 20) -> Samples:
    return scrape_until(lambda: worker_metrics(port), ok, timeout)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_serves_task_counts_runtimes_and_queue_depth(pool: str, data_dir: Path, redis_client) -> None:
    port = free_port()
    scrape = worker_metrics
    started = time.time()
    workers = Workers(data_dir)
    env = {"METRICS_PORT": str(port), "WORKER_POOL": pool, "WORKER_CONCURRENCY": "2"}
    try:
        workers.start(["sync"], env={"sync": env})
        before = scrape(port)
        # Every task of the service is exported from the start, at 0.
        assert (
            "celery_task_succeeded_total",
            frozenset({("service", "sync"), ("task", "sync.echo")}),
        ) in before
        assert total(before, "celery_task_succeeded_total") == 0
        assert total(before, "celery_broker_up") == 1
        # The worker itself: its release and pool, a heartbeat the broker took, one consumer.
        [(info_labels, _)] = [(dict(k[1]), v) for k, v in before.items() if k[0] == "celery_worker_info"]
        assert info_labels["service"] == "sync" and info_labels["pool"] == pool
        assert info_labels["release"].startswith("sync@")
        assert total(before, "celery_worker_last_heartbeat_timestamp_seconds", service="sync") >= started - 1
        assert total(before, "celery_queue_consumers", queue="sync") == 1
        assert total(before, "celery_redelivered_total", service="sync") == 0

        assert [sync.echo.delay(i).get(timeout=30) for i in range(5)] == list(range(5))
        failing = sync.create_account.delay({"doctor_id": 987_654_321, "valid": True, "problems": []})
        failing.get(timeout=30, propagate=False)
        assert failing.state == "FAILURE"
        # A message the worker cannot read: dead-lettered, counted by queue and reason.
        redis_client.lpush("sync", b"this is not a message")
        redis_client.lpush(BELL_PREFIX + "sync", 1)

        samples = wait_until(
            port,
            lambda s: total(s, "celery_task_runtime_seconds_count") >= 6
            and total(s, "celery_dead_lettered_total") >= 1
            # What waits in Redis is read at most once a second: it may lag a scrape by that.
            and total(s, "celery_dead_letters", queue="sync") >= 1,
        )
        print("\n".join(f"{n}{dict(labels)} {v}" for (n, labels), v in sorted(samples.items()) if v))
        echo = {"service": "sync", "task": "sync.echo"}
        account = {"service": "sync", "task": "sync.create_account"}
        assert total(samples, "celery_task_received_total", **echo) == 5
        assert total(samples, "celery_task_received_total", **account) == 1
        assert total(samples, "celery_task_succeeded_total", **echo) == 5
        assert total(samples, "celery_task_succeeded_total") == 5
        assert total(samples, "celery_task_failed_total", **account, exception="DoesNotExist") == 1
        assert total(samples, "celery_task_failed_total") == 1
        assert total(samples, "celery_task_retried_total") == 0
        assert total(samples, "celery_task_rejected_total") == 0
        assert total(samples, "celery_dead_lettered_total", queue="sync", reason="undecodable") == 1
        assert total(samples, "celery_dead_lettered_total") == 1
        last = total(samples, "celery_task_last_success_timestamp_seconds", **echo)
        assert started <= last <= time.time()
        assert total(samples, "celery_task_last_success_timestamp_seconds", **account) == 0
        assert total(samples, "celery_task_runtime_seconds_count", **echo) == 5
        assert total(samples, "celery_task_runtime_seconds_count") == 6
        assert total(samples, "celery_task_runtime_seconds_bucket", **echo, le="+Inf") == 5
        assert total(samples, "celery_task_runtime_seconds_sum") > 0
        assert total(samples, "celery_queue_length", queue="sync") == 0  # drained
        assert total(samples, "celery_queue_oldest_age_seconds", queue="sync") == 0
        assert total(samples, "celery_dead_letters", queue="sync") >= 1
        assert ("celery_delayed_tasks", frozenset()) in samples
    finally:
        workers.stop()
    # The worker's multiprocess files go with it.
    assert not list((data_dir / "metrics").glob("sync-*")), list((data_dir / "metrics").iterdir())


def message(published_at: float | None) -> str:
    properties = {} if published_at is None else {"published_at": published_at}
    return json.dumps({"body": "", "headers": {}, "properties": properties})


def test_collector_reads_every_priority_age_consumers_dead_letters_and_delayed(redis_client) -> None:
    queue = "metricsprobe"
    keys = queue_keys(queue)
    assert keys[0] == queue and keys[5] == f"{queue}\x06\x165" and len(keys) == 10
    store = DeadLetters(redis_client)
    delayed_before = redis_client.zcard(DELAYED)
    try:
        now = time.time()
        # Oldest at the right end (taken next): 30 s old at priority 0, 90 s at priority 9.
        redis_client.rpush(keys[0], message(now - 5), message(now - 30))
        redis_client.rpush(keys[9], message(now - 90))
        # Two live consumers of the queue, one dead (no heartbeat for an hour), one elsewhere.
        server_ms = int(now * 1000)
        redis_client.zadd(OWNERS, {"probe-a": server_ms, "probe-b": server_ms, "probe-dead": 0})
        redis_client.hset(
            CONSUMERS,
            mapping={"probe-a": queue, "probe-b": f"other,{queue}", "probe-dead": queue, "probe-c": "other"},
        )
        store.add(queue=queue, reason="undecodable", detail="test", raw=b"x")
        redis_client.zadd(DELAYED, {f"{queue}\nprobe-message": time.time() * 1000 + 3_600_000})
        families = {f.name: f for f in RedisCollector([queue], lambda: redis_client).collect()}
        value = {name: [(s.labels, s.value) for s in f.samples] for name, f in families.items()}
        assert value["celery_broker_up"] == [({}, 1)]
        assert value["celery_queue_length"] == [({"queue": queue}, 3)]
        [(labels, age)] = value["celery_queue_oldest_age_seconds"]
        assert labels == {"queue": queue} and 89 <= age <= 100
        assert value["celery_queue_consumers"] == [({"queue": queue}, 2)]
        assert value["celery_dead_letters"] == [({"queue": queue}, 1)]
        assert value["celery_delayed_tasks"] == [({}, delayed_before + 1)]
    finally:
        redis_client.delete(*keys)
        redis_client.zrem(OWNERS, "probe-a", "probe-b", "probe-dead")
        redis_client.hdel(CONSUMERS, "probe-a", "probe-b", "probe-dead", "probe-c")
        store.purge(queue)
        redis_client.zrem(DELAYED, f"{queue}\nprobe-message")


def test_an_empty_queue_is_age_zero_and_an_unstamped_message_has_no_age(redis_client) -> None:
    from common.observability.queues import read_broker

    queue = "metricsprobe2"
    try:
        [empty] = read_broker(redis_client, [queue]).queues
        assert (empty.length, empty.oldest_age, empty.consumers) == (0, None, 0)
        redis_client.rpush(queue, message(None))  # a stock kombu producer stamps nothing
        [foreign] = read_broker(redis_client, [queue]).queues
        assert (foreign.length, foreign.oldest_age) == (1, None)
    finally:
        redis_client.delete(queue)


def test_collector_reports_an_unreachable_redis_instead_of_failing() -> None:
    def unreachable() -> object:
        raise ConnectionError("no Redis")

    families = list(RedisCollector(["sync"], unreachable).collect())
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [("celery_broker_up", [0])]


def test_metrics_port_zero_or_empty_is_off() -> None:
    from common.settings import load_settings

    assert load_settings(metrics_port=0).metrics_port is None
    assert load_settings(metrics_port="").metrics_port is None
    assert load_settings(metrics_port="9101").metrics_port == 9101
    assert QUEUE_PREFIX == "jobs.dead:"


def test_a_flood_of_scrapes_reads_redis_once_a_second(redis_client) -> None:
    """/metrics has no login: each request made a round trip to the broker's Redis."""
    collector = RedisCollector(["sync"], lambda: redis_client, min_interval=60)
    for _ in range(500):
        families = {f.name: f for f in collector.collect()}
        assert families["celery_broker_up"].samples[0].value == 1
    assert collector.reads == 1
    collector.min_interval = 0
    list(collector.collect())
    assert collector.reads == 2

"""Prometheus metrics: a real sync worker with METRICS_PORT serves what its tasks did.

Both pools the services use: threads (the signals fire in the worker's main process) and
prefork (they fire in the pool's children, summed through prometheus_client's multiprocess
files). The queue collector is also checked alone against Redis, on a queue no worker reads.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.deadletters.store import QUEUE_PREFIX, DeadLetters
from common.observability.metrics import RedisCollector, queue_keys
from common.transport.broker.scripts import DELAYED
from contracts import sync
from devtools.ports import free_port
from devtools.testing.workers import Workers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and want <= got)


def wait_until(port: int, ok: Callable[[Samples], bool], timeout: float = 20) -> Samples:
    """Scrape until `ok` (a task's counters are updated just after its result is stored)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if ok(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_serves_task_counts_runtimes_and_queue_depth(pool: str, data_dir: Path) -> None:
    port = free_port()
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

        assert [sync.echo.delay(i).get(timeout=30) for i in range(5)] == list(range(5))
        failing = sync.create_account.delay({"doctor_id": 987_654_321, "valid": True, "problems": []})
        failing.get(timeout=30, propagate=False)
        assert failing.state == "FAILURE"

        samples = wait_until(port, lambda s: total(s, "celery_task_runtime_seconds_count") >= 6)
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
        assert total(samples, "celery_task_runtime_seconds_count", **echo) == 5
        assert total(samples, "celery_task_runtime_seconds_count") == 6
        assert total(samples, "celery_task_runtime_seconds_bucket", **echo, le="+Inf") == 5
        assert total(samples, "celery_task_runtime_seconds_sum") > 0
        assert total(samples, "celery_queue_length", queue="sync") == 0  # drained
        assert ("celery_dead_letters", frozenset({("queue", "sync")})) in samples
        assert ("celery_delayed_tasks", frozenset()) in samples
    finally:
        workers.stop()
    # The worker's multiprocess files go with it.
    assert not list((data_dir / "metrics").glob("sync-*")), list((data_dir / "metrics").iterdir())


def test_collector_reads_every_priority_dead_letters_and_delayed(redis_client) -> None:  # type: ignore[no-untyped-def]
    queue = "metricsprobe"
    keys = queue_keys(queue)
    assert keys[0] == queue and keys[5] == f"{queue}\x06\x165" and len(keys) == 10
    store = DeadLetters(redis_client)
    delayed_before = redis_client.zcard(DELAYED)
    try:
        redis_client.rpush(keys[0], "a", "b")
        redis_client.rpush(keys[9], "c")
        store.add(queue=queue, reason="undecodable", detail="test", raw=b"x")
        redis_client.zadd(DELAYED, {f"{queue}\nprobe-message": time.time() * 1000 + 3_600_000})
        families = {f.name: f for f in RedisCollector([queue], lambda: redis_client).collect()}
        value = {name: [(s.labels, s.value) for s in f.samples] for name, f in families.items()}
        assert value["celery_broker_up"] == [({}, 1)]
        assert value["celery_queue_length"] == [({"queue": queue}, 3)]
        assert value["celery_dead_letters"] == [({"queue": queue}, 1)]
        assert value["celery_delayed_tasks"] == [({}, delayed_before + 1)]
    finally:
        redis_client.delete(*keys)
        store.purge(queue)
        redis_client.zrem(DELAYED, f"{queue}\nprobe-message")


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

"""Redis restarted mid-drain, several times: the worker resumes by itself every time, and
with the append-only file on no task is lost and none runs twice."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from common import calls, catalogue
from common.testing.faults import NamedWorker, RestartableRedis
from common.testing.waiting import wait_until

TASKS = 2000
ROUNDS = 3


def executed(app: Celery, worker: str) -> int:
    """How many sync.echo the worker process ran, by its own count."""
    for _ in range(5):
        try:
            stats = app.control.inspect(destination=[worker], timeout=5).stats() or {}
        except (
            OSError,
            RedisError,
            OperationalError,
        ):  # a pooled connection that died with the old Redis; kombu redials
            time.sleep(1)
            continue
        if worker in stats:
            return int(stats[worker].get("total", {}).get("sync.echo", 0))
    raise AssertionError(f"{worker} did not answer stats")


def test_redis_restarts_mid_drain_lose_nothing_and_run_nothing_twice(
    app: Celery, broker: RestartableRedis, data_dir: Path
) -> None:
    worker = NamedWorker("sync", "sync-restart", data_dir, env={"REDIS_URL": broker.url}).start(app)
    client = app.connection_for_write().default_channel.client
    stalls, lost_total, sent_total = [], 0, 0
    try:
        for _ in range(ROUNDS):
            lost, stall = drain_through_a_restart(app, broker)
            lost_total += lost
            sent_total += TASKS
            stalls.append(stall)
            assert worker.proc.running, f"the worker died on a Redis restart:\n{worker.tail()}"
        wait_until(lambda: client.llen("sync") == 0, timeout=30)
        runs = executed(app, f"sync-restart@{socket.gethostname()}")
        print(
            f"\n[redis restart] {ROUNDS} restarts mid-drain of {TASKS}: lost {lost_total}, "
            f"ran twice {runs - sent_total}, stall after Redis was back "
            f"{', '.join(f'{s:.1f}' for s in stalls)} s; worker alive"
        )
        assert lost_total == 0
        assert runs == sent_total, f"{runs} executions for {sent_total} tasks"
    finally:
        worker.terminate()


def drain_through_a_restart(app: Celery, broker: RestartableRedis) -> tuple[int, float]:
    """Send TASKS echoes, restart Redis a third of the way in; return (lost, stall seconds)."""
    with app.producer_or_acquire() as producer:
        results = [calls.apply_async(catalogue.echo, (i,), app=app, producer=producer) for i in range(TASKS)]

    def done() -> int:
        return sum(1 for r in results if r.ready())

    wait_until(lambda: done() >= TASKS // 5, timeout=60)
    before = done()
    broker.restart(down_for=1.0)
    back = time.monotonic()
    wait_until(lambda: done() > before + 10, timeout=60)
    stall = time.monotonic() - back
    # Read results by polling the store: this measures delivery, not the result pub/sub
    # connection the producer also lost in the restart.
    try:
        wait_until(lambda: done() == TASKS, timeout=60)
    except AssertionError:
        pass
    values = [r.result if r.ready() else None for r in results]
    return TASKS - sum(1 for i, v in enumerate(values) if v == i), stall

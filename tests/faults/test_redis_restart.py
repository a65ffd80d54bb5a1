"""Redis restarted mid-drain, several times: the worker resumes by itself every time, and
with the append-only file on no task is lost and none runs twice."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import redis
from celery import Celery

from common import calls
from contracts import sync
from devtools.testing.faults import NamedWorker, RestartableRedis
from devtools.testing.waiting import wait_until

TASKS = 2000
ROUNDS = 3


def runs_per_task(log: Path) -> Counter[str]:
    """How often the worker ran each task, from its own log (Celery logs each success)."""
    return Counter(re.findall(r"Task sync\.echo\[([0-9a-f-]+)\] succeeded", log.read_text()))


def test_redis_restarts_mid_drain_lose_nothing_and_run_nothing_twice(
    app: Celery, broker: RestartableRedis, data_dir: Path
) -> None:
    worker = NamedWorker("sync", "sync-restart", data_dir, env={"REDIS_URL": broker.url}).start(app)
    client = app.connection_for_write().default_channel.client
    stalls, ids, wrong_results, queued_at_restart = [], [], 0, []
    try:
        for _ in range(ROUNDS):
            try:
                sent, wrong, stall, left = drain_through_a_restart(app, broker)
            except AssertionError as exc:  # a stall: what the worker was doing says why
                log, stacks, state = worker.tail(80), worker.stacks(), worker_state(app, broker)
                raise AssertionError(
                    f"{exc}\n--- worker log ---\n{log}\n--- stacks ---\n{stacks}\n--- state ---\n{state}"
                ) from None
            ids += sent
            wrong_results += wrong
            stalls.append(stall)
            queued_at_restart.append(left)
            assert worker.proc.running, f"the worker died on a Redis restart:\n{worker.tail()}"
        wait_until(lambda: client.llen("sync") == 0, timeout=30)
        runs = runs_per_task(worker.log)
        lost = [i for i in ids if runs[i] == 0]
        twice = [i for i in ids if runs[i] > 1]
        print(
            f"\n[redis restart] {ROUNDS} restarts mid-drain of {TASKS}: lost {len(lost)}, "
            f"ran twice {len(twice)}, results missing or wrong {wrong_results}, stall after Redis "
            f"was back {', '.join(f'{s:.1f}' for s in stalls)} s, still queued at each restart "
            f"{', '.join(map(str, queued_at_restart))}; worker alive"
        )
        assert not lost, f"never ran: {lost[:5]}"
        assert not twice, f"ran twice: {twice[:5]}"
        assert wrong_results == 0
    finally:
        worker.terminate()


def worker_state(app: Celery, broker: RestartableRedis) -> str:
    """What Redis and the stalled worker say: the server, its clients, the queue, inspect."""
    lines = []
    try:
        fresh = redis.Redis.from_url(broker.url, socket_timeout=5)
        server = fresh.info("server")
        lines.append(
            f"redis pid {server.get('process_id')} (ours {broker.proc.pid if broker.proc else None}), "
            f"sync queue {fresh.llen('sync')}, in flight "
            f"{sum(fresh.hlen(k) for k in fresh.scan_iter('jobs.inflight:*'))}"
        )
        lines += [
            f"client {c.get('name') or '-'} cmd={c.get('cmd')} age={c.get('age')} idle={c.get('idle')}"
            for c in fresh.client_list()
        ]
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the failure
        lines.append(f"fresh client failed: {type(exc).__name__}: {exc}")
    inspect = app.control.inspect(timeout=5)
    try:
        stats = inspect.stats() or {}
        reserved, active = inspect.reserved() or {}, inspect.active() or {}
        lines += [
            f"{node}: prefetch {s.get('prefetch_count')}, reserved {len(reserved.get(node, []))}, "
            f"active {len(active.get(node, []))}"
            for node, s in stats.items()
        ] or ["no reply to inspect"]
    except Exception as exc:  # noqa: BLE001
        lines.append(f"inspect failed: {type(exc).__name__}: {exc}")
    return "\n".join(lines)


def drain_through_a_restart(app: Celery, broker: RestartableRedis) -> tuple[list[str], int, float, int]:
    """Send TASKS echoes, restart Redis once the worker has taken a fifth of them.

    Returns the task ids, how many results are missing or wrong, the stall in seconds and how
    many tasks were still queued when Redis went down.
    """
    with app.producer_or_acquire() as producer:
        results = [calls.apply_async(sync.echo, (i,), app=app, producer=producer) for i in range(TASKS)]

    def done() -> int:
        return sum(1 for r in results if r.ready())

    def queued() -> int:  # a fresh client: the producer's own connection dies in the restart
        return int(redis.Redis.from_url(broker.url, socket_timeout=5).llen("sync"))

    # Restart once the drain has begun, judged by the queue (cheap), not by 2,000 result
    # reads: on a loaded box those took long enough for the worker to finish first, and
    # "ten more done after the restart" could then never happen (the stall this test saw).
    wait_until(lambda: queued() <= TASKS * 4 // 5, timeout=60)
    left = queued()
    broker.restart(down_for=1.0)
    back = time.monotonic()
    # Generous: under a loaded CI box the reconnect backs off (kombu: 2, 4, 6 ... s apart);
    # the stall printed below is the figure, this only bounds a hang.
    wait_until(lambda: queued() < left - 10 or queued() == 0, timeout=120)
    stall = time.monotonic() - back
    # Read results by polling the store: this measures delivery, not the result pub/sub
    # connection the producer also lost in the restart.
    try:
        wait_until(lambda: done() == TASKS, timeout=120)
    except AssertionError:
        pass
    values = [r.result if r.ready() else None for r in results]
    wrong = TASKS - sum(1 for i, v in enumerate(values) if v == i)
    return [r.id for r in results], wrong, stall, left

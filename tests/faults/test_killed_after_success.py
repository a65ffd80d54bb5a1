"""A worker SIGKILLed after a task's SUCCESS is stored, before Celery acknowledges it.

With the result store and the ack as two steps, that window re-ran a finished task on the
next worker (its side effect twice). On the solo and threads pools the store settles the
message in the same Lua step (common.transport.results), so the window is gone: the task
runs once, its result stays SUCCESS, nothing is left in flight. The kill comes from a
`task_success` receiver, which Celery calls after the store and before the ack.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import redis

from common.celery_app import current_app
from common.transport.broker import scripts
from devtools.processes import ServiceProcess

HEARTBEAT_TIMEOUT = 2.0

WORKER = """
import os
import signal
import sys

import redis
from celery.signals import task_success

from common.celery_app import create_app
from common.worker import run_worker

app = create_app("killprobe")
r = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="killprobe.record")
def record(key):
    r.incr("killprobe:runs:" + key)  # the side effect, counted
    return key


@task_success.connect
def die_once(sender=None, result=None, **_):
    if r.set("killprobe:killed:" + str(result), 1, nx=True):
        os.kill(os.getpid(), signal.SIGKILL)


run_worker(app, pool=sys.argv[1], concurrency=2, argv=["--without-mingle", "--without-gossip"])
"""


def worker(pool: str, name: str, data_dir: Path) -> ServiceProcess:
    proc = ServiceProcess(
        name,
        "killprobe",
        env={"BROKER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)},
        log=data_dir / f"{name}.log",
    )
    proc.argv = [sys.executable, "-c", WORKER, pool]
    return proc.start()


def wait_up(proc: ServiceProcess) -> None:
    deadline = time.monotonic() + 60
    while not any(
        n.startswith("killprobe@") for r in current_app().control.ping(timeout=0.5) or [] for n in r
    ):
        assert proc.running and time.monotonic() < deadline, "killprobe worker did not start"


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_task_killed_after_its_success_was_stored_does_not_run_again(
    pool: str, data_dir: Path, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    key = f"{pool}-{time.time_ns()}"
    first = worker(pool, f"killprobe-{pool}-1", data_dir)
    second = None
    try:
        wait_up(first)
        result = current_app().signature("killprobe.record", args=(key,), queue="killprobe").apply_async()
        deadline = time.monotonic() + 30
        while first.running:
            assert time.monotonic() < deadline, "the worker was not killed after the success"
            time.sleep(0.05)
        assert result.get(timeout=5) == key, "SUCCESS was stored before the kill"
        # A live worker requeues what the dead one held once its heartbeats are overdue.
        second = worker(pool, f"killprobe-{pool}-2", data_dir)
        wait_up(second)
        time.sleep(HEARTBEAT_TIMEOUT + 3)
        runs = int(r.get(f"killprobe:runs:{key}") or 0)
        held = sum(r.hlen(k) for k in r.scan_iter(f"{scripts.INFLIGHT_PREFIX}*"))
        queued = r.llen("killprobe")
        print(
            f"\n[killed after success/{pool}] runs {runs}, result {result.state}, still in flight {held}, "
            f"queued {queued} ({HEARTBEAT_TIMEOUT + 3:.0f} s after a second worker started)"
        )
        assert runs == 1, f"the task ran {runs} times: its message outlived its stored SUCCESS"
        assert result.state == "SUCCESS" and held == 0 and queued == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.running:
                proc.stop()

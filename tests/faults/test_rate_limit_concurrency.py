"""A contract's concurrency cap, shared by two real workers, and a SIGKILLed holder (issue 22.2).

A task declared `rate_limit=RateLimit(concurrency=2, per="key")` may run at most twice at
once per key across every worker; a task over the cap goes back to the delayed set, holding
no thread, so tasks of other keys on the same queue go on. A worker SIGKILLed while holding
slots must not hold them for ever: they are freed once its heartbeats stop (here
BROKER_HEARTBEAT_TIMEOUT=2 s), not at the end of their lease (the task's time limit, an hour
by default). Prints the most seen running at once and how long the killed worker's slots
stayed taken.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.celery_app import current_app
from devtools.processes import ServiceProcess

HEARTBEAT_TIMEOUT = 2.0
QUEUE = "rlprobe"

WORKER = """
import os
import time

import redis

from common.celery_app import create_app, implements
from common.worker import run_worker
from contracts.declare import RateLimit, ServiceContracts

SERVICE = ServiceContracts("rlprobe")
app = create_app("rlprobe")
r = redis.Redis.from_url(os.environ["REDIS_URL"])


@SERVICE.task(rate_limit=RateLimit(concurrency=2, per="key"))
def hold(key: str, seconds: float) -> None:
    '''Probe: runs `seconds`, recording how many of its key run at once.'''


@implements(app, hold, bind=True)
def hold_impl(self, key, seconds):
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    running = r.incr("rlprobe:running:" + key)
    r.rpush("rlprobe:seen:" + key, running)
    r.rpush("rlprobe:starts:" + key, "%f %d" % (time.time(), redelivered))
    try:
        if not redelivered:
            time.sleep(seconds)
    finally:
        r.decr("rlprobe:running:" + key)
    return running


run_worker(app, pool="threads", concurrency=4, argv=["--without-mingle", "--without-gossip"])
"""


def worker(name: str, data_dir: Path) -> ServiceProcess:
    proc = ServiceProcess(
        name, QUEUE, env={"BROKER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)}, log=data_dir / f"{name}.log"
    )
    proc.argv = [sys.executable, "-c", WORKER, name]
    return proc.start()


def wait_up(count: int) -> None:
    deadline = time.monotonic() + 60
    while (
        sum(n.startswith(f"{QUEUE}@") for r in current_app().control.ping(timeout=0.5) or [] for n in r)
        < count
    ):
        assert time.monotonic() < deadline, "the probe workers did not start"


def send(key: str, seconds: float):
    return current_app().signature(f"{QUEUE}.hold", args=(key, seconds), queue=QUEUE).apply_async()


def starts(r: redis.Redis, key: str) -> list[tuple[float, bool]]:
    return [
        (float(t), flag == "1")
        for t, flag in (s.decode().split() for s in r.lrange(f"rlprobe:starts:{key}", 0, -1))
    ]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        if proc.running:
            proc.stop()


def test_at_most_two_run_at_once_per_key_across_two_workers(
    procs: list[ServiceProcess], tmp_path: Path, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    procs += [worker("rlprobe-1", tmp_path), worker("rlprobe-2", tmp_path)]
    wait_up(2)
    capped, other = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    capped_results = [send(capped, 0.5) for _ in range(8)]
    other_results = [send(other, 0.1) for _ in range(2)]
    [res.get(timeout=60) for res in other_results]
    other_done = time.monotonic() - started
    [res.get(timeout=60) for res in capped_results]
    capped_done = time.monotonic() - started
    seen = max(int(v) for v in r.lrange(f"rlprobe:seen:{capped}", 0, -1))
    print(
        f"\n8 tasks of one key (0.5 s each) under concurrency=2 on 2 workers x 4 threads: at most {seen} "
        f"at once, done in {capped_done:.1f} s; 2 tasks of another key done in {other_done:.1f} s"
    )
    assert seen == 2
    assert capped_done >= 4 * 0.5 - 0.2, "8 runs of 0.5 s two at a time take at least 2 s"
    assert other_done < capped_done - 1.0, "another key's tasks waited behind the capped ones"


def test_a_sigkilled_workers_slots_are_freed_after_its_heartbeats_stop(
    procs: list[ServiceProcess], tmp_path: Path, redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    key = f"c-{uuid.uuid4().hex[:6]}"
    victim = worker("rlprobe-victim", tmp_path)
    procs.append(victim)
    wait_up(1)
    [send(key, 600) for _ in range(2)]  # both slots, for ten minutes
    deadline = time.monotonic() + 20
    while len(starts(r, key)) < 2:
        assert time.monotonic() < deadline, "the slot holders did not start"
        time.sleep(0.05)
    procs.append(worker("rlprobe-rescuer", tmp_path))
    wait_up(2)
    assert victim.proc is not None
    os.kill(victim.proc.pid, signal.SIGKILL)
    killed = time.time()
    victim.proc.wait(10)
    probe = send(key, 0.1)
    assert probe.get(timeout=60) >= 1
    fresh = [t for t, redelivered in starts(r, key)[2:] if not redelivered]
    freed_after = fresh[0] - killed
    print(
        f"\nconcurrency=2, both slots held by a worker SIGKILLed: a new task of that key started "
        f"{freed_after:.1f} s after the kill (heartbeat timeout {HEARTBEAT_TIMEOUT:.0f} s, lease 3600 s)"
    )
    assert freed_after < HEARTBEAT_TIMEOUT + 8

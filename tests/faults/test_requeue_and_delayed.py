"""Messages that go back on their queue, and a delayed set with a malformed entry in it.

Issue 24: every message that goes back on its queue (a task's `Reject(requeue=True)`, a
recovery from a worker that was SIGKILLed) arrives marked `redelivered`, as with kombu's own
Redis transport, so a task that rejects its first delivery runs on the second; a task that
rejects every delivery is dead-lettered after TASK_MAX_REQUEUES requeues instead of looping
for ever, with one log line per requeue, and the worker goes on with other tasks.
Issue 21 (7): one malformed entry in the delayed set used to fail every heartbeat and stop
every countdown on the platform; it is now set aside as a dead letter, and a countdown sent
after it runs on time.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from common.celery_app import current_app
from common.transport.broker import scripts
from common.transport.dead_letter_store import MALFORMED, REQUEUE_LIMIT, DeadLetters
from devtools.processes import ServiceProcess

HEARTBEAT_TIMEOUT = 2.0
MAX_REQUEUES = 3
QUEUE = "requeueprobe"

WORKER = """
import os
import sys
import time

import redis
from celery.exceptions import Reject

from common.celery_app import create_app
from common.worker import run_worker

app = create_app("requeueprobe")
r = redis.Redis.from_url(os.environ["REDIS_URL"])


def redelivered(task):
    return bool((task.request.delivery_info or {}).get("redelivered"))


@app.task(name="requeueprobe.always_reject", bind=True)
def always_reject(self, key):
    r.incr("requeueprobe:runs:" + key)
    raise Reject("never runs", requeue=True)


@app.task(name="requeueprobe.reject_first", bind=True)
def reject_first(self, key):
    r.rpush("requeueprobe:seen:" + key, int(redelivered(self)))
    if not redelivered(self):
        raise Reject("not on a first delivery", requeue=True)
    return "ran on redelivery"


@app.task(name="requeueprobe.hold", bind=True)
def hold(self, key):
    r.rpush("requeueprobe:seen:" + key, int(redelivered(self)))
    if not redelivered(self):
        time.sleep(120)  # SIGKILLed meanwhile
    return redelivered(self)


@app.task(name="requeueprobe.echo")
def echo(value):
    return value


run_worker(app, pool="threads", concurrency=2, argv=["--without-mingle", "--without-gossip"])
"""


def worker(name: str, data_dir: Path) -> ServiceProcess:
    proc = ServiceProcess(
        name,
        QUEUE,
        env={"BROKER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT), "TASK_MAX_REQUEUES": str(MAX_REQUEUES)},
        log=data_dir / f"{name}.log",
    )
    proc.argv = [sys.executable, "-c", WORKER]
    return proc.start()


def wait_up(proc: ServiceProcess) -> None:
    deadline = time.monotonic() + 60
    while not any(
        n.startswith(f"{QUEUE}@") for r in current_app().control.ping(timeout=0.5) or [] for n in r
    ):
        assert proc.running and time.monotonic() < deadline, f"{proc.name} did not start"


def send(task: str, *args: object, **options: Any):
    return current_app().signature(f"{QUEUE}.{task}", args=args, queue=QUEUE).apply_async(**options)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, Path]]:
    data_dir = tmp_path_factory.mktemp("requeueprobe")
    proc = worker("requeueprobe-main", data_dir)
    try:
        wait_up(proc)
        yield proc, data_dir / "requeueprobe-main.log"
    finally:
        proc.stop()


def test_a_task_rejecting_every_delivery_is_dead_lettered_after_the_requeue_limit(
    probe: tuple[ServiceProcess, Path], redis_url: str
) -> None:
    proc, log = probe
    r = redis.Redis.from_url(redis_url)
    key = str(time.time_ns())
    result = send("always_reject", key)
    store = DeadLetters(r)
    deadline = time.monotonic() + 30
    while not (entries := [e for e in store.list(QUEUE, reason=REQUEUE_LIMIT) if e.task_id == result.id]):
        assert time.monotonic() < deadline, "the requeue loop did not end in a dead letter"
        time.sleep(0.1)
    time.sleep(1)  # a loop would go on meanwhile
    runs = int(r.get(f"requeueprobe:runs:{key}") or 0)
    requeue_lines = [line for line in log.read_text().splitlines() if "Requeued message" in line]
    print(
        f"\n[reject loop] ran {runs} times, {len(requeue_lines)} requeue log lines, then dead-lettered: "
        f"{entries[0].detail}"
    )
    assert (
        runs == MAX_REQUEUES + 1
    ), f"ran {runs} times; a limit of {MAX_REQUEUES} requeues means {MAX_REQUEUES + 1}"
    assert len(requeue_lines) == MAX_REQUEUES + 1, "one log line per requeue"
    assert len(log.read_text().splitlines()) < 200, "the log is flooded"
    assert r.hget(scripts.REDELIVERED, result.id) is None, "its redelivery count outlived it"
    assert not any(r.hlen(k) for k in r.scan_iter(f"{scripts.INFLIGHT_PREFIX}*") if r.type(k) == b"hash")
    # The worker goes on with other work. (A service's worker also stores the task's FAILURE
    # naming the reason, through its intake; this probe app has none.)
    assert proc.running
    assert send("echo", "still here").get(timeout=10) == "still here"


def test_a_task_rejecting_its_first_delivery_runs_on_the_redelivery(
    probe: tuple[ServiceProcess, Path], redis_url: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    key = str(time.time_ns())
    result = send("reject_first", key)
    assert result.get(timeout=20) == "ran on redelivery"
    assert r.lrange(f"requeueprobe:seen:{key}", 0, -1) == [b"0", b"1"]
    assert r.hget(scripts.REDELIVERED, result.id) is None


def test_a_message_recovered_from_a_killed_worker_arrives_redelivered(
    probe: tuple[ServiceProcess, Path], redis_url: str, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_url)
    key = str(time.time_ns())
    probe[0].stop()  # only the worker about to be killed consumes
    victim = worker("requeueprobe-victim", tmp_path)
    rescuer = None
    try:
        wait_up(victim)
        result = send("hold", key)
        deadline = time.monotonic() + 20
        while not r.llen(f"requeueprobe:seen:{key}"):
            assert time.monotonic() < deadline, "the task did not start"
            time.sleep(0.05)
        assert victim.proc is not None
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        rescuer = worker("requeueprobe-rescuer", tmp_path)
        assert result.get(timeout=40) is True, "the recovered message was not marked redelivered"
        assert r.lrange(f"requeueprobe:seen:{key}", 0, -1) == [b"0", b"1"]
    finally:
        for proc in (victim, rescuer):
            if proc is not None and proc.running:
                proc.stop()
        probe[0].start()
        wait_up(probe[0])


def test_a_malformed_delayed_entry_is_set_aside_and_countdowns_still_run_on_time(
    probe: tuple[ServiceProcess, Path], redis_url: str
) -> None:
    proc, log = probe
    r = redis.Redis.from_url(redis_url)
    r.delete("requeueprobe-not-a-list")
    r.hset("requeueprobe-not-a-list", "a", "b")
    marker = f"malformed-{time.time_ns()}"
    r.zadd(scripts.DELAYED, {marker: 1000, f"requeueprobe-not-a-list\n{marker}": 1000})
    sent = time.time()
    result = send("echo", "on time", countdown=2)
    assert result.get(timeout=15) == "on time"
    late = time.time() - sent - 2
    print(f"\n[malformed delayed entry] a 2 s countdown sent after it ran {late:+.2f} s from its due time")
    assert late < 2.0, f"the countdown ran {late:.1f} s late"
    set_aside = [e for e in DeadLetters(r).list(reason=MALFORMED, limit=None) if marker in e.raw]
    assert {e.queue for e in set_aside} == {scripts.DELAYED, "requeueprobe-not-a-list"}
    assert all(e.detail.startswith("delayed entry") for e in set_aside)
    assert not any(marker in m.decode(errors="replace") for m in r.zrange(scripts.DELAYED, 0, -1))
    assert "heartbeat failed" not in log.read_text()
    assert proc.running

"""A task that holds the GIL does not make its worker look dead; a killed worker's helper dies with it.

A worker's lease in `jobs.owners` was refreshed only by a thread of the worker process, so a
task holding the GIL in one long C call (a catastrophic regex, a huge JSON decode) starved it:
another worker judged the process dead after the heartbeat timeout and ran its task again. The
lease is now also refreshed by a helper process (common.transport.broker.heartbeat).

The probe's hold is deterministic: libc's `sleep` called through `ctypes.PyDLL`, which keeps the
GIL for the whole call, as a C extension that never releases it would (and costs no CPU on a
shared machine, unlike a regex tuned to a duration). The task measures how long it held it and
the longest gap a thread of its own could not run.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from common.celery_app import current_app
from common.transport.broker import scripts
from devtools.processes import ServiceProcess, wait_for_workers
from devtools.testing.waiting import wait_until

HEARTBEAT_TIMEOUT = 3.0
HOLD = 15  # seconds the task keeps the GIL: five heartbeat timeouts

WORKER = """
import ctypes
import os
import sys
import threading
import time

import redis

from common.celery_app import create_app
from common.worker import run_worker

app = create_app("gilprobe")
r = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="gilprobe.hold")
def hold(key, seconds):
    r.rpush("gilprobe:runs:" + key, os.getpid())
    beats = []
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            beats.append(time.monotonic())
            time.sleep(0.02)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    time.sleep(0.2)
    began = time.monotonic()
    ctypes.PyDLL(None).sleep(int(seconds))  # libc sleep(3) with the GIL held throughout
    held = time.monotonic() - began
    time.sleep(0.2)  # the thread's first beat after the hold
    stop.set()
    thread.join()
    starved = max(b - a for a, b in zip(beats, beats[1:]))
    r.hset("gilprobe:held:" + key, mapping={"held": held, "starved": starved})
    return key


@app.task(name="gilprobe.nap")
def nap(key, seconds):
    first = r.rpush("gilprobe:runs:" + key, f"{os.getpid()} {time.time()}") == 1
    if first:
        time.sleep(seconds)  # long enough to be killed in; a redelivery returns at once
    return key


run_worker(
    app, pool=sys.argv[1], concurrency=2,
    argv=["--without-mingle", "--without-gossip", f"--hostname={sys.argv[2]}@%h"],
)
"""


class Probe:
    """One `gilprobe` worker process under its own node name."""

    def __init__(self, name: str, pool: str, data_dir: Path) -> None:
        self.name = name
        self.proc = ServiceProcess(
            name,
            "gilprobe",
            env={"BROKER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)},
            log=data_dir / f"{name}.log",
        )
        self.proc.argv = [sys.executable, "-c", WORKER, pool, name]
        self.log = data_dir / f"{name}.log"
        self.helpers: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def start(self) -> Probe:
        self.proc.start()
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.running, f"{self.name} exited during start-up:\n{self.tail()}"
            try:
                wait_for_workers(current_app(), [self.name], timeout=1)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, f"{self.name} did not answer ping:\n{self.tail()}"
        wait_until(lambda: helpers_of(self.pid), timeout=10)
        self.helpers |= set(helpers_of(self.pid))
        return self

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:]) if self.log.exists() else "(no log)"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def gone(pid: int) -> bool:
    stat = _stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def helpers_of(pid: int) -> list[int]:
    """The heartbeat helper processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] != pid:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"transport/broker/heartbeat.py" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def probes(data_dir: Path, redis_url: str) -> Iterator[Callable[..., Probe]]:
    started: list[Probe] = []

    def start(name: str, pool: str) -> Probe:
        probe = Probe(name, pool, data_dir)
        started.append(probe)
        return probe.start()

    yield start
    for probe in started:
        if probe.proc.proc is not None:
            try:
                os.killpg(probe.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            probe.proc.proc.wait()
    client = redis.Redis.from_url(redis_url)
    client.delete("gilprobe")  # nothing left for the next test's workers


def owner_of(client: redis.Redis, pid: int) -> str:
    """The owner id (`host:pid:uuid`) under which process `pid` holds messages."""
    for member in client.zrange(scripts.OWNERS, 0, -1):
        if member.decode().split(":")[-2] == str(pid):
            return member.decode()
    raise AssertionError(f"process {pid} holds no lease")


def lease_age_ms(client: redis.Redis, owner: str) -> float | None:
    """How old `owner`'s lease is by Redis's clock; None if it has none (judged dead)."""
    score = client.zscore(scripts.OWNERS, owner)
    if score is None:
        return None
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000 - score


def send(task: str, *args: object) -> object:
    return current_app().signature(task, args=args, queue="gilprobe").apply_async()


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_task_holding_the_gil_for_longer_than_the_heartbeat_timeout_runs_once(
    pool: str, probes, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    workers = [probes(f"gilprobe-{pool}-{x}", pool) for x in "ab"]
    key = f"hold-{pool}-{time.time_ns()}"
    result = send("gilprobe.hold", key, HOLD)
    wait_until(lambda: client.llen(f"gilprobe:runs:{key}"), timeout=30)
    runner = int(cast(bytes, client.lindex(f"gilprobe:runs:{key}", 0)))
    owner = owner_of(client, runner)
    # Watch the runner's lease from outside while the task holds its GIL.
    oldest, lost = 0.0, False
    while not result.ready():
        age = lease_age_ms(client, owner)
        if age is None:
            lost = True
        else:
            oldest = max(oldest, age)
        time.sleep(0.2)
    assert result.get(timeout=5) == key
    time.sleep(HEARTBEAT_TIMEOUT + 2)  # time for a wrongful redelivery to show
    runs = client.llen(f"gilprobe:runs:{key}")
    figures = {k.decode(): float(v) for k, v in client.hgetall(f"gilprobe:held:{key}").items()}
    logs = "\n".join(w.log.read_text() for w in workers)
    print(
        f"\n[gil hold/{pool}] GIL held {figures['held']:.1f} s (a thread of the task's process could "
        f"not run for {figures['starved']:.1f} s), heartbeat timeout {HEARTBEAT_TIMEOUT:.0f} s, second "
        f"worker up: runs {runs}, oldest lease seen {oldest:.0f} ms, lease lost: {lost}"
    )
    assert figures["held"] >= HOLD - 0.5 and figures["starved"] >= HOLD - 1, "the GIL was not held"
    assert runs == 1, f"the task ran {runs} times: its worker was judged dead while it held the GIL"
    assert not lost and oldest < HEARTBEAT_TIMEOUT * 1000 / 2, "the lease went stale during the hold"
    assert "stopped heartbeating" not in logs and "no longer held by this worker" not in logs
    assert "run on a thread only" not in logs


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_sigkilled_worker_s_helper_dies_with_it_and_its_task_comes_back_within_the_timeout(
    pool: str, probes, redis_url: str
) -> None:
    """Only the worker's own process is killed (not its group), so nothing kills the helper
    but its own watch on its parent; under prefork the pool's children outlive the kill."""
    client = redis.Redis.from_url(redis_url)
    workers = [probes(f"gilprobe-kill-{pool}", pool), probes(f"gilprobe-kill-{pool}-b", "threads")]
    key = f"nap-{pool}-{time.time_ns()}"
    send("gilprobe.nap", key, 20)
    wait_until(lambda: client.llen(f"gilprobe:runs:{key}"), timeout=30)
    held_by = next(
        int(k.decode().split(":")[-2])
        for k in client.scan_iter(f"{scripts.INFLIGHT_PREFIX}*")
        if client.hlen(k)
    )
    [victim] = [w for w in workers if w.pid == held_by]
    helpers = helpers_of(victim.pid)
    assert len(helpers) == 1, f"expected one heartbeat helper under {victim.name}, found {helpers}"
    killed_at, killed_mono = time.time(), time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: gone(helpers[0]), timeout=5)
    helper_gone_in = time.monotonic() - killed_mono
    wait_until(lambda: client.llen(f"gilprobe:runs:{key}") >= 2, timeout=HEARTBEAT_TIMEOUT + 15)
    again = float(client.lindex(f"gilprobe:runs:{key}", 1).decode().split()[1])
    recovered_in = again - killed_at
    print(
        f"\n[sigkill/{pool}] helper gone {helper_gone_in:.2f} s after the worker's SIGKILL; task back on "
        f"the other worker after {recovered_in:.1f} s (heartbeat timeout {HEARTBEAT_TIMEOUT:.0f} s)"
    )
    assert helper_gone_in < 2.0
    assert recovered_in <= HEARTBEAT_TIMEOUT + 3


def test_a_stopped_worker_leaves_no_helper_and_no_lease(probes, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    worker = probes("gilprobe-term", "prefork")
    [helper] = helpers_of(worker.pid)
    owner = owner_of(client, worker.pid)
    code = worker.proc.stop(timeout=30)
    assert code == 0, worker.tail()
    still = [p for p in (helper, *worker.helpers) if not gone(p)]
    print(f"\n[sigterm] worker exited {code}; helper {helper} gone: {not still}; lease left: "
          f"{client.zscore(scripts.OWNERS, owner) is not None}")  # fmt: skip
    assert not still, f"heartbeat helper(s) {still} outlived their worker"
    assert client.zscore(scripts.OWNERS, owner) is None

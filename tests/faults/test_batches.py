"""Batches under faults, with real workers: callbacks run exactly once, after every member.

Members are real `sync.sync_doctor_to_external_system` tasks on two sync workers against the
CRM sandbox; the callbacks are tasks of a probe worker (`batchprobe`) that counts its runs in
Redis, so a callback published twice would show as two runs.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from common import batches
from common.celery_app import current_app
from common.models import Doctor
from contracts import sync
from contracts.declare import ServiceContracts
from devtools.processes import ServiceProcess
from devtools.testing.faults import NamedWorker
from devtools.testing.waiting import wait_until

HEARTBEAT_TIMEOUT = 2.0
MEMBERS = 1000

PROBE = """
import json
import os
import signal
import sys
import time

import redis
from celery.signals import task_success

from common.celery_app import create_app
from common.worker import run_worker

app = create_app("batchprobe")
r = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="batchprobe.callback")
def callback(status, name):
    r.incr("batchprobe:runs:" + name)
    r.rpush("batchprobe:statuses:" + name, json.dumps({**status, "at": time.time()}))


@app.task(name="batchprobe.member")
def member(key):
    r.incr("batchprobe:runs:" + key)
    while key.startswith("gated-") and not r.exists("batchprobe:gate"):
        time.sleep(0.05)
    return key


@task_success.connect
def die_once(sender=None, result=None, **_):
    if str(result).startswith("kill-") and r.set("batchprobe:killed:" + str(result), 1, nx=True):
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the whole worker, pool children included


run_worker(app, pool=sys.argv[1], concurrency=2, argv=["--without-mingle", "--without-gossip"])
"""

# The probe's tasks as a producer sees them: a contract module only this test process holds.
_PROBE_CONTRACTS = ServiceContracts("batchprobe")


@_PROBE_CONTRACTS.task
def member(key: str) -> str:
    """A member that counts its runs; `gated-*` ones wait for the gate, `kill-*` ones kill."""
    return key  # a contract's stub: the probe worker defines the task


@pytest.fixture(scope="module", autouse=True)
def _probe_contracts() -> Iterator[None]:
    module = types.ModuleType("contracts.batchprobe")
    module.__spec__ = importlib.machinery.ModuleSpec("contracts.batchprobe", None)
    module.SERVICE = _PROBE_CONTRACTS
    sys.modules["contracts.batchprobe"] = module
    yield
    del sys.modules["contracts.batchprobe"]


def probe_worker(pool: str, name: str, data_dir: Path) -> ServiceProcess:
    proc = ServiceProcess(
        name,
        "batchprobe",
        env={"BROKER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)},
        log=data_dir / f"{name}.log",
    )
    proc.argv = [sys.executable, "-c", PROBE, pool]
    proc.start()
    deadline = time.monotonic() + 60
    while not any(n.startswith(f"{name}@") or n.startswith("batchprobe@") for r in ping() for n in r):
        assert proc.running and time.monotonic() < deadline, f"probe worker {name} did not start"
    return proc


def ping() -> list[dict[str, Any]]:
    return current_app().control.ping(timeout=0.5) or []


def callback(name: str) -> Any:
    return current_app().signature("batchprobe.callback", args=(name,), queue="batchprobe")


def runs(r: redis.Redis, name: str) -> int:
    return int(r.get(f"batchprobe:runs:{name}") or 0)


def statuses(r: redis.Redis, name: str) -> list[dict[str, Any]]:
    return [json.loads(s) for s in r.lrange(f"batchprobe:statuses:{name}", 0, -1)]


@pytest.fixture
def probe(data_dir: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        if proc.running:
            proc.stop()


@pytest.fixture
def sync_workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[list[NamedWorker]]:
    workers = [
        NamedWorker(
            "sync", f"sync-batch-{x}", data_dir,
            env={**peers_env, "WORKER_CONCURRENCY": "4", "BROKER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)},
        )
        for x in "ab"
    ]  # fmt: skip
    for w in workers:
        w.start(current_app())
    yield workers
    for w in workers:
        if w.proc.running:
            w.kill()


def doctors(n: int, tag: str) -> list[int]:
    Doctor.objects.bulk_create(
        Doctor(first_name="Batch", last_name=f"{tag}{i}", email=f"{tag}{i}@batches.example") for i in range(n)
    )
    return list(Doctor.objects.filter(last_name__startswith=tag).values_list("pk", flat=True))


def test_a_batch_survives_a_worker_sigkilled_mid_run_and_on_success_runs_once_after_all(
    sync_workers: list[NamedWorker],
    probe: list[ServiceProcess],
    crm_sandbox: Any,
    data_dir: Path,
    redis_url: str,
) -> None:
    r = redis.Redis.from_url(redis_url)
    probe.append(probe_worker("threads", "batchprobe-kill", data_dir))
    ids = doctors(MEMBERS, "kill")
    crm_sandbox.latency = 0.01
    started = time.monotonic()
    with batches.Batch(on_success=callback("ok-kill"), on_complete=callback("done-kill")) as batch:
        batch.add_many(sync.sync_doctor_to_external_system, [(i,) for i in ids])
    wait_until(lambda: batch.status()["succeeded"] >= MEMBERS // 4, timeout=60, interval=0.02)
    done_at_kill = batch.status()["succeeded"]
    sync_workers[0].kill()
    wait_until(lambda: runs(r, "ok-kill") >= 1, timeout=120)
    took = time.monotonic() - started
    time.sleep(HEARTBEAT_TIMEOUT + 2)  # time for a second publish, if there were one
    [ok] = statuses(r, "ok-kill")
    last_crm_write = max(req["at"] for req in crm_sandbox.requests if req["path"] == "/api/doctors")
    twice = sum(1 for d in crm_sandbox.doctors.values() if d["writes"] > 1)
    print(
        f"\n[batch/sigkill] {MEMBERS} members, a worker SIGKILLed at {done_at_kill} done: on_success "
        f"ran {runs(r, 'ok-kill')} time(s), on_complete {runs(r, 'done-kill')}, {took:.1f} s to the "
        f"callback; CRM holds {len(crm_sandbox.doctors)} doctors ({twice} written twice: redelivered)"
    )
    assert runs(r, "ok-kill") == 1 and runs(r, "done-kill") == 1
    assert (ok["total"], ok["succeeded"], ok["failed"]) == (MEMBERS, MEMBERS, 0)
    assert ok["at"] >= last_crm_write - 0.5, "on_success ran before the last member's CRM write"
    assert sorted(crm_sandbox.doctors) == sorted(str(i) for i in ids)
    assert batch.status()["pending"] == 0


def test_members_failing_for_good_fire_on_complete_once_with_their_ids_and_not_on_success(
    sync_workers: list[NamedWorker],
    probe: list[ServiceProcess],
    crm_sandbox: Any,
    data_dir: Path,
    redis_url: str,
) -> None:
    r = redis.Redis.from_url(redis_url)
    probe.append(probe_worker("threads", "batchprobe-fail", data_dir))
    ids = doctors(MEMBERS, "fail")
    doomed = ids[10:13]
    crm_sandbox.refused.update(str(i) for i in doomed)
    with batches.Batch(
        on_success=callback("ok-fail"), on_complete=callback("done-fail"), on_death=callback("death-fail")
    ) as batch:
        task_ids = batch.add_many(sync.sync_doctor_to_external_system, [(i,) for i in ids])
    wait_until(lambda: runs(r, "done-fail") >= 1, timeout=120)
    time.sleep(2)
    [done] = statuses(r, "done-fail")
    doomed_tasks = {task_ids[ids.index(i)] for i in doomed}
    print(
        f"\n[batch/failed for good] {MEMBERS} members, 3 refused by the CRM: on_complete ran "
        f"{runs(r, 'done-fail')} time(s) with {done['succeeded']} succeeded, {done['failed']} failed; "
        f"on_success {runs(r, 'ok-fail')}, on_death {runs(r, 'death-fail')}"
    )
    assert runs(r, "done-fail") == 1 and runs(r, "ok-fail") == 0
    assert (done["succeeded"], done["failed"]) == (MEMBERS - 3, 3)
    assert set(done["failed_ids"]) == doomed_tasks
    assert runs(r, "death-fail") == 1  # the task dead-letters its final failure
    assert set(batch.status()["failed_ids"]) == doomed_tasks


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_member_killed_between_its_result_and_its_ack_counts_once(
    pool: str, probe: list[ServiceProcess], data_dir: Path, redis_url: str
) -> None:
    """threads: the store acks in the same step, so it never runs again; prefork: the child's
    store cannot ack, so the member runs again, and is still counted once (by its task id)."""
    r = redis.Redis.from_url(redis_url)
    r.delete("batchprobe:gate")
    probe.append(probe_worker(pool, f"batchprobe-{pool}-1", data_dir))
    tag = f"{pool}-{time.time_ns()}"
    keys = [f"kill-{tag}", *(f"m{i}-{tag}" for i in range(8)), f"gated-{tag}"]
    with batches.Batch(on_complete=callback(f"done-{tag}")) as batch:
        batch.add_many("batchprobe.member", [(k,) for k in keys])
    wait_until(lambda: not probe[0].running, timeout=30)  # killed right after the first success
    probe.append(probe_worker(pool, f"batchprobe-{pool}-2", data_dir))
    wait_until(lambda: all(runs(r, k) for k in keys), timeout=60)
    time.sleep(HEARTBEAT_TIMEOUT + 3)  # the dead worker's messages are back and ran by now
    status = batch.status()
    fired_early = runs(r, f"done-{tag}")
    print(
        f"\n[batch/killed after result, {pool}] the killed member ran {runs(r, keys[0])} time(s); "
        f"batch {status['succeeded']}/{status['total']} succeeded while the gated member runs; "
        f"callback ran {fired_early} time(s) before the last member ended"
    )
    assert fired_early == 0, "the callback fired before the gated member ended"
    assert (status["succeeded"], status["pending"]) == (len(keys) - 1, 1)
    r.set("batchprobe:gate", 1)
    wait_until(lambda: runs(r, f"done-{tag}") >= 1, timeout=30)
    time.sleep(1)
    assert runs(r, f"done-{tag}") == 1
    assert statuses(r, f"done-{tag}")[0]["succeeded"] == len(keys)

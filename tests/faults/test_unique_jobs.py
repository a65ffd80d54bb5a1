"""Unique jobs with real producers, real workers, real Redis and the CRM sandbox.

The key is taken in the same Lua step as the publish (common.transport.broker.uniqueness), so
two producer processes racing on one doctor queue one sync; a debounced burst runs once with
its last arguments; and a key whose holder was SIGKILLed runs out with its lease.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.celery_app import current_app
from common.models import Doctor
from contracts import sync
from devtools.processes import child_env
from devtools.testing.faults import NamedWorker
from devtools.testing.waiting import wait_until

DOCTOR = 7
SENDS = 50  # per producer

# Ready, it waits for "go" on stdin, so both producers send at the same moment.
PRODUCER = """
import json, sys, time
from common.celery_app import create_app
from contracts import sync
create_app("producer")
print("ready", flush=True)
sys.stdin.readline()
began = time.time()
ids = [sync.sync_doctor_to_external_system.delay(int(sys.argv[1])).id for _ in range(int(sys.argv[2]))]
print(json.dumps({"ids": ids, "began": began, "ended": time.time()}))
"""


@pytest.fixture
def start_workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator:
    started: list[NamedWorker] = []

    def start(*names: str, **env: str) -> list[NamedWorker]:
        new = [NamedWorker("sync", name, data_dir, env={**peers_env, **env}) for name in names]
        started.extend(new)
        return [w.start(current_app()) for w in new]

    yield start
    for w in started:
        if w.proc.running:
            w.kill()


def crm_calls(crm, reference: int) -> int:
    return sum(
        1
        for r in crm.requests
        if isinstance(r["body"], dict) and r["body"].get("reference") == str(reference)
    )


def queued_syncs(client, doctor_id: int) -> int:
    """Messages of sync_doctor_to_external_system(doctor_id) waiting on the sync queue."""
    count = 0
    for raw in client.lrange("sync", 0, -1):
        message = json.loads(raw)
        if message["headers"].get("task") == "sync.sync_doctor_to_external_system":
            if message["headers"].get("argsrepr") in (f"({doctor_id},)", f"[{doctor_id}]"):
                count += 1
    return count


def test_two_producers_bursting_on_one_doctor_queue_one_crm_sync_and_a_send_after_it_started_one_more(
    start_workers, crm_sandbox, redis_client
) -> None:
    Doctor.objects.update_or_create(
        pk=DOCTOR, defaults={"first_name": "Uni", "last_name": "Que", "email": "unique@faults.example"}
    )
    key = sync.sync_doctor_to_external_system.unique_key((DOCTOR,))
    redis_client.delete(key)  # a clean slate: no earlier test's send for doctor 7 holds it
    before = crm_calls(crm_sandbox, DOCTOR)

    # No sync worker runs: two producer processes send 50 times each, at the same moment.
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(DOCTOR), str(SENDS)],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for p in producers:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready", p.communicate()[1][-3000:]
    for p in producers:  # both told before either is waited for
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
    replies = []
    for p in producers:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-3000:]
        replies.append(json.loads(out.decode().strip().splitlines()[-1]))
    ids = [i for r in replies for i in r["ids"]]
    overlap = min(r["ended"] for r in replies) - max(r["began"] for r in replies)
    waiting = queued_syncs(redis_client, DOCTOR)
    holder = redis_client.get(key).decode()
    print(
        f"\n[unique burst] 2 producers x {SENDS} sends, sending side by side for {overlap:.2f} s: "
        f"{waiting} message queued, {len(set(ids))} distinct task id(s) returned to the callers"
    )
    assert overlap > 0, "the producers did not send at the same time"
    assert waiting == 1
    assert set(ids) == {holder}  # every caller's AsyncResult follows the one queued task

    # Started, two workers make exactly one CRM call; it runs for 2 s.
    crm_sandbox.latency = 2.0
    start_workers("sync-unique-a", "sync-unique-b", WORKER_CONCURRENCY="2")
    wait_until(lambda: crm_calls(crm_sandbox, DOCTOR) - before >= 1, timeout=30)
    # Sent again while it runs (it has started: the key is free): it runs once more. (A free
    # worker thread starts it at once, freeing the key again: until="start" lets runs overlap.)
    second_id = sync.sync_doctor_to_external_system.delay(DOCTOR).id
    first = current_app().AsyncResult(holder).get(timeout=30)
    crm_sandbox.latency = 0.0
    second = current_app().AsyncResult(second_id).get(timeout=30)
    time.sleep(2)  # time for any extra copy to show itself
    calls = crm_calls(crm_sandbox, DOCTOR) - before
    print(
        f"[unique burst] CRM calls for doctor {DOCTOR}: {calls} "
        "(one for the burst, one for the send after it started)"
    )
    assert first["status"] == second["status"] == "synced"
    assert second_id != holder
    assert calls == 2
    assert redis_client.get(key) is None  # released at start: nothing left held


def test_a_debounced_burst_runs_once_with_the_last_arguments(start_workers, redis_client) -> None:
    start_workers("sync-debounce", WORKER_CONCURRENCY="2")
    key_arg = int(time.time() * 1000) % 1_000_000_000
    results = []
    for value in range(1, 6):
        results.append(sync.probe_unique.delay(key_arg, value))
        last_sent = time.monotonic()
        time.sleep(0.1)
    assert len({r.id for r in results}) == 5  # each replaced the one before: its own id
    assert results[-1].get(timeout=30) == 5
    ran_after = time.monotonic() - last_sent
    time.sleep(1.5)  # past the debounce window and a promotion tick: nothing else runs
    states = [r.state for r in results]
    print(
        f"\n[debounce] 5 sends 100 ms apart (debounce 0.3 s): ran {states.count('SUCCESS')} time(s), "
        f"with value {results[-1].result}, {ran_after:.2f} s after the last send; states {states}"
    )
    assert states == ["PENDING"] * 4 + ["SUCCESS"]
    assert redis_client.get(sync.probe_unique.unique_key((key_arg, 0))) is None  # until finish: released


def test_a_worker_sigkilled_while_holding_a_key_does_not_keep_it_past_its_lease(
    start_workers, redis_client
) -> None:
    [worker] = start_workers("sync-unique-kill", WORKER_CONCURRENCY="2")
    key_arg = int(time.time() * 1000) % 1_000_000_000 + 1
    key = sync.probe_unique.unique_key((key_arg, 0))
    assert sync.probe_unique.unique is not None
    lease = sync.probe_unique.unique.seconds
    held = sync.probe_unique.apply_async((key_arg, 1), {"hold_ms": 8000})
    wait_until(
        lambda: any(redis_client.hlen(k) for k in redis_client.scan_iter("jobs.inflight:*")), timeout=20
    )
    time.sleep(1.0)  # running, holding its key (until="finish")
    duplicate = sync.probe_unique.delay(key_arg, 2)
    assert duplicate.id == held.id  # held while it runs: a send follows the running task
    worker.kill()
    killed_at = time.monotonic()
    assert redis_client.get(key) == held.id.encode()  # nobody released it: only the lease can
    wait_until(lambda: redis_client.get(key) is None, timeout=lease + 5, interval=0.05)
    freed_after = time.monotonic() - killed_at
    after = sync.probe_unique.delay(key_arg, 3)
    print(
        f"\n[unique lease] key held by a SIGKILLed worker freed {freed_after:.2f} s after the kill "
        f"(lease {lease:g} s from the task's start); the next send queued as {after.id[:8]}"
    )
    assert freed_after <= lease
    assert after.id != held.id


def test_every_path_to_the_queue_is_covered_send_many_the_outbox_relay_and_countdowns(redis_client) -> None:
    from django.db import transaction

    from common import calls
    from common.outbox.models import OutboxMessage

    base = int(time.time() * 1000) % 1_000_000_000 + 10_000
    doctors = [base, base + 1, base + 2]
    for d in doctors:
        redis_client.delete(sync.sync_doctor_to_external_system.unique_key((d,)))
    waiting = lambda d: queued_syncs(redis_client, d)  # noqa: E731
    # send_many (pipelined): each doctor twice, once queued.
    calls.send_many(sync.sync_doctor_to_external_system, [(d,) for d in doctors[:2] * 2])
    # Inside a transaction: kept in the outbox, published after the commit by the relay's code.
    with transaction.atomic():
        for _ in range(3):
            sync.sync_doctor_to_external_system.delay(doctors[2])
    assert not OutboxMessage.objects.exists()
    # A countdown goes to the delayed set: a second send is a duplicate there too.
    delayed_before = redis_client.zcard("jobs.delayed")
    later = [sync.probe_unique.apply_async((base, v), countdown=60) for v in (1, 2)]
    assert redis_client.zcard("jobs.delayed") == delayed_before + 1  # debounced: replaced in place
    assert later[0].id != later[1].id
    redis_client.delete(sync.sync_doctor_to_external_system.unique_key((base + 3,)))
    counted = [sync.sync_doctor_to_external_system.apply_async((base + 3,), countdown=60) for _ in range(2)]
    assert redis_client.zcard("jobs.delayed") == delayed_before + 2  # not debounced: a duplicate
    assert counted[0].id == counted[1].id
    counts = [waiting(d) for d in doctors]
    print(f"\n[unique paths] queued per doctor after 2 x send_many + 3 sends in a transaction: {counts}")
    assert counts == [1, 1, 1]
    redis_client.delete("sync")
    for d in [*doctors, base + 3]:
        redis_client.delete(sync.sync_doctor_to_external_system.unique_key((d,)))
    for member in redis_client.zrange("jobs.delayed", 0, -1):
        if b"sync.probe_unique" in member or str(base + 3).encode() in member:
            redis_client.zrem("jobs.delayed", member)

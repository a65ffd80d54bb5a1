"""A task that fails with a huge, contract-valid argument is reported once, capped, and quickly.

Issue 21: `sync.create_account` with a 160 KB string in `problems` failed; masking the report
(an e-mail pattern that backtracked quadratically) held the GIL for about 22 s, the worker's
heartbeat stopped, another worker judged it dead and requeued its message, and the task ran
again and again. Masking is now bounded (common.masking): the failure is logged
at once, capped, the lease stays fresh, and the task runs once.

Two sync workers with a short heartbeat timeout, as in the report: either could take the
message back from the other if the holder looked dead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from common.celery_app import current_app
from common.masking import LINE_CHARS
from common.transport.broker import scripts
from contracts import sync
from devtools.testing.faults import NamedWorker
from devtools.testing.waiting import wait_until

HEARTBEAT_TIMEOUT = 3.0
PROBLEM_CHARS = 160_000
MISSING_DOCTOR = 2_000_000_000  # no such row: create_account fails with Doctor.DoesNotExist


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[list[NamedWorker]]:
    env = {**peers_env, "BROKER_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)}
    started = [NamedWorker("sync", name, data_dir, env=env) for name in ("huge-a", "huge-b")]
    try:
        for w in started:
            w.start(current_app())
        yield started
    finally:
        for w in started:
            if w.proc.running:
                w.kill()


def lease_ages_ms(client: redis.Redis, pids: set[int]) -> list[float]:
    """How old the leases of the processes `pids` are, by Redis's clock (a missing lease: inf)."""
    seconds, micros = client.time()
    now = seconds * 1000 + micros // 1000
    ages = {}
    owners = cast("list[tuple[bytes, float]]", client.zrange(scripts.OWNERS, 0, -1, withscores=True))
    for member, score in owners:
        pid = int(member.decode().split(":")[-2])
        if pid in pids:
            ages[pid] = now - score
    return [ages.get(pid, float("inf")) for pid in pids]


def test_a_160_kb_argument_fails_once_reported_capped_and_the_lease_stays_fresh(
    workers: list[NamedWorker], redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    pids = {w.pid for w in workers}
    data = {"doctor_id": MISSING_DOCTOR, "valid": True, "problems": ["x" * PROBLEM_CHARS]}
    result = sync.create_account.delay(data)
    task_id = result.id
    failed = re.compile(rf"Task sync\.create_account\[{re.escape(task_id)}\] failed")
    received = f"Task sync.create_account[{task_id}] received"

    def logs() -> str:
        return "".join(w.log.read_text() for w in workers if w.log.exists())

    oldest = 0.0
    sent = time.monotonic()
    while not failed.search(logs()):
        ages = lease_ages_ms(client, pids)
        oldest = max(oldest, *ages)
        assert time.monotonic() - sent < 60, f"no failure report within 60 s\n{workers[0].tail()}"
        time.sleep(0.1)
    reported_after = time.monotonic() - sent

    # Long enough for another worker to have judged the holder dead and run the task again.
    time.sleep(3 * HEARTBEAT_TIMEOUT)
    text = logs()
    runs = text.count(received)
    reports = len(failed.findall(text))
    line = next(line for line in text.splitlines() if failed.search(line))
    print(
        f"\n[huge failure text] {PROBLEM_CHARS // 1000} KB argument: reported after {reported_after:.2f} s, "
        f"{runs} delivery, {reports} report, report line {len(line)} chars, "
        f"oldest lease seen {oldest:.0f} ms (timeout {HEARTBEAT_TIMEOUT * 1000:.0f} ms)"
    )
    assert runs == 1 and reports == 1
    assert "more chars cut]" in line and len(line) < LINE_CHARS
    assert oldest < HEARTBEAT_TIMEOUT * 1000, "a worker's lease went stale while the failure was reported"
    assert all(w.proc.running for w in workers)
    wait_until(lambda: result.state == "FAILURE", timeout=10)

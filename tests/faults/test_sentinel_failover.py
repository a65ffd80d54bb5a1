"""Redis Sentinel: the primary SIGKILLed mid-drain; the sentinels promote the replica, and the
workers and producers carry on there by themselves (REDIS_URL=sentinel://...).

Measured and printed: how long the sentinels took to promote, the stall (longest stretch
without a finished task, from the kill on), tasks lost and tasks run twice, and what a
producer sending through the failover got for each send (published, or refused with
BrokerUnavailableError and kept in the outbox, then published by the relay).

What is guaranteed, and asserted: a task whose send returned before the kill is not lost
(it was replicated long before), and a send during the failover is never lost silently (it
is published, or kept in the outbox). What is not: Redis replicates asynchronously, so a
write the primary acknowledged in its last milliseconds and had not yet passed to the
replica is gone after the failover - a publish (the task is lost), a fetch (the task runs
again) or an ack (the task runs again when its worker exits and returns what it held).
Those are counted and printed, and the allowance for them is `UNREPLICATED_ALLOWANCE`.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from celery import Celery

from common import calls
from common.celery_config import celery_config
from common.outbox.models import OutboxMessage
from common.outbox.relay import relay_once
from common.settings import load_settings
from common.transport.locks import task_lock
from common.transport.sentinel import master_client
from common.transport.tls import redis_from_url
from contracts import sync
from devtools.local_sentinel import LocalSentinelGroup
from devtools.testing.faults import NamedWorker
from devtools.testing.waiting import wait_until

TASKS = 1500
# Sends through the failover: one every SEND_EVERY s, until the producer has published
# directly again for AFTER_RECOVERY s (after the outbox's BROKER_RETRY_AFTER back-off).
SEND_EVERY = 0.02
AFTER_RECOVERY = 1.0
# Writes in the last moment before the kill that had not reached the replica (see above).
UNREPLICATED_ALLOWANCE = 16
SUCCEEDED = re.compile(
    r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d{3}).*?Task sync\.echo\[([0-9a-f-]+)\] succeeded"
)


# The data nodes' password (in the URL, percent-encoded) and the sentinels' own, as deployed.
DATA_PASSWORD, SENTINEL_PASSWORD = "data@pw/1", "sentinel-pw"


@pytest.fixture(scope="module")
def group() -> Iterator[LocalSentinelGroup]:
    with LocalSentinelGroup(password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD) as g:
        yield g


@pytest.fixture(scope="module")
def sentinel_app(group: LocalSentinelGroup) -> Celery:
    app = Celery("sentinel-producer", set_as_current=False)
    settings = load_settings(
        redis_url=group.url,
        redis_sentinel_master=group.master_name,
        redis_sentinel_password=SENTINEL_PASSWORD,
    )
    app.conf.update(celery_config(settings))
    return app


def successes(logs: list[Path]) -> tuple[Counter[str], list[float]]:
    """Runs per task id and the wall-clock time of each success, from the workers' logs."""
    runs: Counter[str] = Counter()
    times = []
    for log in logs:
        for stamp, task_id in SUCCEEDED.findall(log.read_text()):
            runs[task_id] += 1
            times.append(datetime.fromisoformat(stamp.replace(",", ".")).timestamp())
    return runs, sorted(times)


def longest_gap(times: list[float], since: float) -> float:
    """The longest stretch without a finished task from `since` to the last one."""
    after = [t for t in times if t >= since]
    points = [since, *after]
    return max((b - a for a, b in zip(points, points[1:], strict=False)), default=float("inf"))


def test_primary_killed_mid_drain_workers_and_producers_continue_on_the_promoted_replica(
    group: LocalSentinelGroup, sentinel_app: Celery, data_dir: Path
) -> None:
    app = sentinel_app
    workers = [NamedWorker("sync", f"sync-sentinel-{n}", data_dir, env=group.env) for n in ("a", "b")]
    for worker in workers:
        worker.proc.start()
    how = {"master": group.master_name, "sentinel_password": SENTINEL_PASSWORD}
    client = master_client(group.url, **how, socket_timeout=2, socket_connect_timeout=2)
    # The client every lock (and the beat leader lock) uses, made before the failover.
    locks = redis_from_url(group.url, **how, socket_timeout=2, socket_connect_timeout=2)
    try:
        wait_for(workers, app)  # both started at once: the start-ups overlap
        with app.producer_or_acquire() as producer:
            before = [calls.apply_async(sync.echo, (i,), app=app, producer=producer) for i in range(TASKS)]
        wait_until(lambda: client.llen("sync") <= TASKS * 4 // 5, timeout=60)
        queued_at_kill = int(client.llen("sync"))

        with task_lock("sentinel-failover", timeout=60, client=locks) as held:
            assert held
        # The release must reach the replica before the kill: a DEL the primary never passed on
        # leaves the lock held on the new primary until it expires (seen once here).
        assert locks.wait(1, 2000) == 1

        killed_wall, killed = time.time(), group.kill_primary()
        # Without the outbox a send fails with our error, naming no password, and keeps nothing.
        with pytest.raises(
            calls.BrokerUnavailableError, match="Could not publish sync.echo: broker at sentinel://"
        ) as refused_send:
            calls.apply_async(sync.echo, (-1,), app=app, outbox=False)
        assert "pw" not in str(refused_send.value).replace("/0", ""), str(refused_send.value)
        during, promoted = send_through_failover(app, group, killed, first=TASKS)
        with task_lock("sentinel-failover", timeout=60, client=locks) as held:
            assert held, "the lock's client did not follow the failover (or the lock survived it)"
        # The outbox relay publishes what was kept while the broker was away.
        kept = [task_id for task_id, _value, outcome, _took in during if outcome == "kept"]
        wait_until(lambda: relay_once(app).broker_down is None, timeout=30, interval=0.5)
        assert not OutboxMessage.objects.filter(task_id__in=kept).exists(), "the relay left kept tasks"

        def inflight() -> int:
            return sum(int(client.hlen(k)) for k in client.scan_iter("jobs.inflight:*"))

        wait_until(lambda: client.llen("sync") == 0, timeout=30)
        # An ack the primary took but never passed on leaves its task in flight on the new
        # primary, owned by a live worker, until that worker exits and requeues it: count it.
        try:
            wait_until(lambda: inflight() == 0, timeout=5)
        except AssertionError:
            pass
        stuck = inflight()
        for worker in workers:
            assert worker.proc.running, f"worker {worker.name} died in the failover:\n{worker.tail()}"
        runs, times = successes([w.log for w in workers])
        stall = longest_gap(times, killed_wall)
        before_ids = [r.id for r in before]
        sent = [task_id for task_id, _v, outcome, _t in during if outcome == "sent"]
        refused = [(value, outcome) for _id, value, outcome, _t in during if outcome not in ("sent", "kept")]
        lost_before = [i for i in before_ids if runs[i] == 0]
        lost_sent = [i for i in sent if runs[i] == 0]
        lost_kept = [i for i in kept if runs[i] == 0]
        twice = [i for i in [*before_ids, *sent, *kept] if runs[i] > 1]
        results_missing = sum(
            1 for r in before if runs[r.id] and client.get(f"celery-task-meta-{r.id}") is None
        )
        slowest_send = max(took for *_rest, took in during)
        print(
            f"\n[sentinel failover] primary SIGKILLed with {queued_at_kill} of {TASKS} tasks queued; "
            f"replica promoted after {promoted - killed:.1f} s; stall (no task finished) "
            f"{stall:.1f} s; lost {len(lost_before)} of those sent before the kill; ran twice "
            f"{len(twice)}; still in flight after unreplicated acks {stuck}; results missing "
            f"{results_missing}.\n"
            f"[sentinel failover] sends during the failover: {len(during)} "
            f"({len(sent)} published, {len(kept)} kept in the outbox and relayed, "
            f"{len(refused)} refused and not kept); lost {len(lost_sent)} published, "
            f"{len(lost_kept)} relayed; slowest send {slowest_send:.2f} s; workers alive"
        )
        assert not refused, f"sends neither published nor kept: {refused[:5]}"
        assert not lost_before, f"sent before the kill, never ran: {lost_before[:5]}"
        assert not lost_kept, f"kept in the outbox, never ran: {lost_kept[:5]}"
        # Beyond this, only writes the replica had not received when the primary died.
        assert len(lost_sent) + len(twice) + stuck <= UNREPLICATED_ALLOWANCE, (
            lost_sent[:5],
            twice[:5],
            stuck,
        )
        assert during[-1][2] == "sent", "the producer did not publish directly again after the failover"
        assert stall < 30
    finally:
        for worker in workers:
            worker.terminate()


def wait_for(workers: list[NamedWorker], app: Celery, timeout: float = 90) -> None:
    from devtools.processes import wait_for_workers

    deadline = time.monotonic() + timeout
    while True:
        for worker in workers:
            if not worker.proc.running:
                raise RuntimeError(f"worker {worker.name} exited during start-up:\n{worker.tail()}")
        try:
            wait_for_workers(app, [w.name for w in workers], timeout=1)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise TimeoutError("\n".join(w.tail() for w in workers)) from None


def send_through_failover(
    app: Celery, group: LocalSentinelGroup, killed: float, first: int
) -> tuple[list[tuple[str, int, str, float]], float]:
    """Send a task every SEND_EVERY s from the kill until sends publish directly again.

    Returns (task id, value, "sent" | "kept" | the error, seconds the send took) per send,
    and when the sentinels had promoted the replica.
    """
    during: list[tuple[str, int, str, float]] = []
    value = first
    # Each kept send logs a WARNING; the counts printed by the test say it once.
    calls_logger = logging.getLogger("common.calls")
    level = calls_logger.level
    calls_logger.setLevel(logging.ERROR)
    try:
        return _send_until_direct(app, group, killed, value, during)
    finally:
        calls_logger.setLevel(level)


def _send_until_direct(
    app: Celery,
    group: LocalSentinelGroup,
    killed: float,
    value: int,
    during: list[tuple[str, int, str, float]],
) -> tuple[list[tuple[str, int, str, float]], float]:
    promoted: float | None = None
    direct_since: float | None = None
    while True:
        began = time.monotonic()
        try:
            result = calls.apply_async(sync.echo, (value,), app=app)
            outcome = "kept" if OutboxMessage.objects.filter(task_id=result.id).exists() else "sent"
            task_id = result.id
        except Exception as exc:  # noqa: BLE001 - counted: a send must publish or keep
            outcome, task_id = f"{type(exc).__name__}: {exc}", ""
        now = time.monotonic()
        during.append((task_id, value, outcome, now - began))
        value += 1
        if promoted is None and group.primary_port() == group.replica.port:
            promoted = now
        if promoted is not None and outcome == "sent":
            direct_since = direct_since or now
            if now - direct_since >= AFTER_RECOVERY:
                return during, promoted
        else:
            direct_since = None
        if now - killed > 40:
            raise AssertionError(f"no recovery within 40 s of the kill:\n{group.logs()}")
        time.sleep(SEND_EVERY)

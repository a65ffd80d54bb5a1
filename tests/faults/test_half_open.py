"""The worker's Redis connections go half-open mid-drain (a NAT or load balancer drops its
state, a partition): a proxy between the worker and Redis stops forwarding bytes both ways
without closing either socket. The worker recovers by itself within a bounded time once new
connections get through, or exits non-zero for its supervisor (here: the test) to replace;
it never hangs, and no task is lost or runs twice."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from celery import Celery

from common import calls
from contracts import sync
from devtools.testing.faults import NamedWorker, RestartableRedis
from devtools.testing.tcp_proxy import TcpProxy
from devtools.testing.waiting import wait_until

TASKS_BEFORE = 2000  # sent before the freeze; the freeze comes once a fifth has been taken
TASKS_DURING = 50  # sent (straight to Redis) while the worker's connections are frozen
# Seconds until new connections get through again (the frozen ones never do): a blip, and an
# outage longer than the heartbeat timeout (10 s) and several reconnect attempts.
FROZEN_FOR = [5.0, 20.0]
BOUND = 60.0  # from the thaw until the worker consumes again, or has exited non-zero
STACKS_AFTER = 15.0  # a recovery slower than this prints where the worker waited


def runs_per_task(*logs: Path) -> Counter[str]:
    """How often each task ran, from the workers' own logs (Celery logs each success)."""
    found: Counter[str] = Counter()
    for log in logs:
        if log.exists():
            found.update(re.findall(r"Task sync\.echo\[([0-9a-f-]+)\] succeeded", log.read_text()))
    return found


@pytest.mark.parametrize("frozen_for", FROZEN_FOR)
def test_a_half_open_connection_never_hangs_the_worker(
    app: Celery, broker: RestartableRedis, data_dir: Path, frozen_for: float
) -> None:
    direct = redis.Redis.from_url(broker.url, socket_timeout=5)
    with TcpProxy("127.0.0.1", broker.port) as proxy:
        env = {"REDIS_URL": proxy.url()}
        worker = NamedWorker("sync", f"sync-halfopen-{frozen_for:.0f}", data_dir, env=env).start(app)
        replacement: NamedWorker | None = None
        try:
            with app.producer_or_acquire() as producer:
                before = [
                    calls.apply_async(sync.echo, (i,), app=app, producer=producer)
                    for i in range(TASKS_BEFORE)
                ]
            wait_until(lambda: direct.llen("sync") <= TASKS_BEFORE * 4 // 5, timeout=60)
            frozen = proxy.freeze()
            frozen_at = time.monotonic()
            queued_at_freeze = direct.llen("sync")
            with app.producer_or_acquire() as producer:
                during = [
                    calls.apply_async(sync.echo, (i,), app=app, producer=producer)
                    for i in range(TASKS_DURING)
                ]
            time.sleep(max(0.0, frozen_for - (time.monotonic() - frozen_at)))
            proxy.thaw()
            thawed_at = time.monotonic()

            # Recovered: a task sent after the thaw has run. Or exited: non-zero, then replaced.
            probe = calls.apply_async(sync.echo, (-1,), app=app)
            outcome, code, stacks = None, None, ""
            while time.monotonic() - thawed_at < BOUND:
                if probe.ready():
                    outcome = "recovered"
                    break
                if not worker.proc.running:
                    code = worker.proc.proc.returncode if worker.proc.proc else None
                    outcome = "exited"
                    break
                if not stacks and time.monotonic() - thawed_at > STACKS_AFTER:
                    stacks = worker.stacks()  # where a slow recovery waits (py-spy, if on PATH)
                time.sleep(0.1)
            took = time.monotonic() - thawed_at
            if outcome is None:
                stacks = worker.stacks()
                raise AssertionError(
                    f"the worker neither consumed again nor exited within {BOUND:.0f} s of the thaw "
                    f"(frozen {frozen} connection(s) for {frozen_for:.0f} s)\n--- worker log ---\n"
                    f"{worker.tail(60)}\n--- stacks ---\n{stacks}"
                )
            if outcome == "exited":
                assert code != 0, f"the worker exited 0 on a half-open connection:\n{worker.tail(60)}"
                replacement = NamedWorker(
                    "sync", f"sync-halfopen-{frozen_for:.0f}-b", data_dir, env=env
                ).start(app)

            results = [*before, *during, probe]
            wait_until(lambda: all(r.ready() for r in results), timeout=120)
            wait_until(lambda: direct.llen("sync") == 0, timeout=30)
            time.sleep(1)  # the last log lines
            logs = [worker.log] + ([replacement.log] if replacement else [])
            runs = runs_per_task(*logs)
            ids = [r.id for r in results]
            lost = [i for i in ids if runs[i] == 0]
            twice = [i for i in ids if runs[i] > 1]
            log_text = "\n".join(log.read_text() for log in logs if log.exists())
            dropped = log_text.count("the connection is half-open")
            reconnects = log_text.count("Connection to broker lost")
            expected = [*range(TASKS_BEFORE), *range(TASKS_DURING), -1]
            wrong = sum(1 for r, value in zip(results, expected, strict=True) if r.result != value)
            print(
                f"\n[half-open] froze {frozen} worker connection(s) with {queued_at_freeze} of "
                f"{TASKS_BEFORE} still queued, {TASKS_DURING} more sent while frozen, new connections "
                f"let through after {frozen_for:.0f} s: the worker {outcome}"
                f"{f' (exit status {code}) and was replaced' if outcome == 'exited' else ''} "
                f"{took:.1f} s after the thaw ({took + frozen_for:.1f} s after the freeze); "
                f"{len(ids)} tasks: lost {len(lost)}, ran twice {len(twice)}; proxy accepted "
                f"{proxy.accepted} connection(s); overdue BRPOPs dropped {dropped}, consumer "
                f"reconnects {reconnects}"
            )
            if stacks:
                print(f"--- worker stacks {STACKS_AFTER:.0f} s after the thaw ---\n{stacks}")
            if lost:
                for r in results:
                    if r.id in lost[:5]:
                        lines = [line for line in log_text.splitlines() if r.id in line]
                        print(f"lost {r.id}: {r.state} {r.result!r}\n  " + "\n  ".join(lines[:6]))
            assert took <= BOUND
            assert not lost, f"never ran: {lost[:5]}"
            assert not twice, f"ran twice: {twice[:5]}"
            assert wrong == 0, f"{wrong} results missing or wrong"
        finally:
            worker.terminate()
            if replacement is not None:
                replacement.terminate()

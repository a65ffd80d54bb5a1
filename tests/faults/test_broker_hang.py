"""Redis frozen (SIGSTOP: TCP up, no replies) at send: the publish fails within seconds,
the outbox keeps the task, and once Redis answers again the relay sends it and it runs once."""

from __future__ import annotations

import re
import time
from pathlib import Path

from celery import Celery

from common import calls
from common.outbox.models import OutboxMessage
from contracts import sync
from devtools.processes import ServiceProcess
from devtools.testing.faults import NamedWorker, RestartableRedis
from devtools.testing.waiting import wait_until

# A send to a hung broker may block for the result subscription (a timeout and one retry)
# and the publish (one timeout): three BROKER_SOCKET_TIMEOUTs (3 s each by default).
SEND_BOUND = 3 * 3.0 + 1.5


def test_a_send_to_a_frozen_redis_fails_fast_and_the_outbox_keeps_it(
    app: Celery, broker: RestartableRedis, data_dir: Path
) -> None:
    worker = NamedWorker("sync", "sync-hang", data_dir, env={"REDIS_URL": broker.url}).start(app)
    try:
        assert calls.apply_async(sync.echo, (1,), app=app).get(timeout=30) == 1  # warm connections
        broker.freeze()
        try:
            began = time.monotonic()
            result = calls.apply_async(sync.echo, (42,), app=app)
            blocked = time.monotonic() - began
        finally:
            broker.thaw()
        kept = OutboxMessage.objects.filter(task_id=result.id).exists()
        print(
            f"\n[hung redis] send returned after {blocked:.1f} s (bound {SEND_BOUND} s); "
            f"kept in outbox: {kept}"
        )
        assert blocked <= SEND_BOUND
        assert kept, "the task was neither published nor kept"

        # The relay as deployed: a loop (a pass every 0.2 s here) that publishes kept tasks.
        relay = ServiceProcess(
            "outbox-relay",
            "web.manage",
            ["relay_outbox", "--interval", "0.2"],
            env={"REDIS_URL": broker.url},
            log=data_dir / "hang-relay.log",
        ).start()
        try:
            assert result.get(timeout=60) == 42
            # The publish that "failed" may have reached Redis anyway (it was written to the
            # socket before the timeout): then the relay's copy is the second one, dropped.
            wait_until(lambda: not OutboxMessage.objects.filter(task_id=result.id).exists(), timeout=60)
        finally:
            assert relay.stop(timeout=20) == 0, (data_dir / "hang-relay.log").read_text()[-3000:]
        time.sleep(1)
        runs = len(re.findall(rf"\[{re.escape(result.id)}\] succeeded", worker.log.read_text()))
        assert runs == 1, f"ran {runs} times"
    finally:
        worker.terminate()

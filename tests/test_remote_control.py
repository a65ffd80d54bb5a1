"""The broker is the trust boundary: a client reaching Redis cannot stop or reshape a worker.

Celery's workers obey any remote control command published to their pidbox; whoever can
write to Redis could shut every worker down, restart or shrink pools, stop consumption of
a queue or throttle a task. A worker here obeys only reading commands and event switching
unless WORKER_REMOTE_CONTROL_ALLOW names more (revoke, and revoke's terminate, separately)
(`common.remote_control.restrict_remote_control`). Real worker processes, the session's Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.celery_app import current_app
from devtools.platform import worker_process
from devtools.testing.workers import Workers

# Commands an attacker would send; each must be refused and leave the worker as it was.
ATTACKS: list[tuple[str, dict[str, object]]] = [
    ("shutdown", {}),
    ("pool_restart", {"reload": False}),
    ("pool_shrink", {"n": 1}),
    ("pool_grow", {"n": 4}),
    ("autoscale", {"max": 1, "min": 1}),
    ("cancel_consumer", {"queue": "sync"}),
    ("add_consumer", {"queue": "attacker"}),
    ("rate_limit", {"task_name": "sync.echo", "rate_limit": "1/h"}),
    ("time_limit", {"task_name": "sync.echo", "soft": 0.001, "hard": 0.002}),
    ("revoke", {"task_id": "00000000-0000-0000-0000-000000000000", "terminate": True}),
    ("revoke", {"task_id": "00000000-0000-0000-0000-000000000000"}),  # cancels any task by id
    ("hello", {"from_node": "forger@host", "revoked": ["00000000-0000-0000-0000-000000000000"]}),
    ("terminate", {"task_id": "00000000-0000-0000-0000-000000000000", "signal": "KILL"}),
    ("objgraph", {}),
]


@pytest.fixture(scope="module")
def worker(data_dir: Path) -> Iterator[tuple[str, Workers]]:
    workers = Workers(data_dir / "remote-control")
    (data_dir / "remote-control").mkdir(exist_ok=True)
    names = workers.start(["sync"])
    try:
        yield names["sync"], workers
    finally:
        workers.stop()


def test_worker_refuses_commands_that_stop_or_reshape_it(worker: tuple[str, Workers]) -> None:
    from contracts import sync

    node, workers = worker
    control = current_app().control
    for command, arguments in ATTACKS:
        replies = control.broadcast(command, arguments=arguments, destination=[node], reply=True, timeout=3)
        answer = {k: v for reply in replies or [] for k, v in reply.items()}.get(node)
        print(command, "->", answer)
        assert answer is not None, f"{command}: no reply"
        assert "refused by this worker" in str(answer.get("error")), (command, answer)
    # The documented call, fire and forget, as `celery control shutdown` sends it.
    control.shutdown(destination=[node])
    time.sleep(3)

    assert workers.procs["sync"].running, workers.logs()
    inspect = control.inspect(destination=[node], timeout=5)
    assert node in (inspect.ping() or {})
    stats = (inspect.stats() or {})[node]
    # The sync service declares 32 threads (services/sync/service.py): no grow/shrink/autoscale took.
    assert stats["pool"]["max-concurrency"] == 32, stats["pool"]
    assert [q["name"] for q in (inspect.active_queues() or {})[node]] == ["sync"]  # no cancel/add
    assert sync.echo.delay(5).get(timeout=20) == 5  # still consuming, no rate or time limit
    log = (workers.log_dir / "sync-worker.log").read_text()
    assert "Refused remote control command 'shutdown'" in log
    assert "Got shutdown from remote" not in log


def test_reading_commands_and_events_still_work(worker: tuple[str, Workers]) -> None:
    node, _ = worker
    control = current_app().control
    inspect = control.inspect(destination=[node], timeout=5)
    for method in ("ping", "stats", "active", "reserved", "scheduled", "registered", "active_queues", "conf"):
        reply = getattr(inspect, method)() or {}
        assert node in reply and "error" not in (reply[node] if isinstance(reply[node], dict) else {}), (
            method,
            reply,
        )
    for command in ("enable_events", "disable_events"):
        replies = control.broadcast(command, destination=[node], reply=True, timeout=3)
        assert "ok" in replies[0][node], (command, replies)
    assert (inspect.revoked() or {})[node] == []  # neither the revoke nor the forged hello took


def test_a_command_named_in_the_setting_is_obeyed(data_dir: Path) -> None:
    log = data_dir / "remote-control-allowed.log"
    proc = worker_process(
        "sync",
        log,
        ["--without-mingle", "--without-gossip", "--hostname=sync-allowed@%h"],
        {"WORKER_REMOTE_CONTROL_ALLOW": "shutdown,revoke"},
        name="sync-allowed",
    ).start()
    try:
        app = current_app()
        deadline = time.monotonic() + 60
        node = None
        while node is None:
            names = [n for reply in app.control.ping(timeout=0.5) or [] for n in reply]
            node = next((n for n in names if n.startswith("sync-allowed@")), None)
            assert time.monotonic() < deadline and proc.running, log.read_text()[-3000:]
        revoked = app.control.revoke("11111111-1111-1111-1111-111111111111", destination=[node], reply=True)
        assert "ok" in revoked[0][node], revoked
        terminate = app.control.revoke("2", destination=[node], reply=True, terminate=True)
        assert "refused" in str(terminate[0][node]), terminate  # terminate is not named
        app.control.shutdown(destination=[node])
        assert proc.proc is not None
        assert proc.proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        proc.stop()

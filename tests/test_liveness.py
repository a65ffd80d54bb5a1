"""`python -m common.liveness SERVICE`: what a container orchestrator calls per worker."""


import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from common.celery_app import current_app
from devtools.platform import worker_process
from devtools.processes import child_env
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def emails_worker(data_dir: Path) -> Iterator[Workers]:
    w = Workers(data_dir)
    w.start(["emails"])
    yield w
    w.stop()


def liveness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.liveness", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_running_worker_is_alive(emails_worker: Workers) -> None:
    probe = liveness("emails")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith("emails@") and probe.stdout.strip().endswith(": ok")


def test_a_service_without_a_worker_here_is_reported_dead(emails_worker: Workers) -> None:
    probe = liveness("reports", "--timeout", "1")
    assert probe.returncode == 1
    assert "no answer to ping" in probe.stderr


def test_a_stopped_worker_is_reported_dead(data_dir: Path) -> None:
    w = Workers(data_dir)
    w.start(["sync"])
    assert liveness("sync").returncode == 0
    w.stop()
    assert liveness("sync", "--timeout", "1").returncode == 1


CANCELLED_HOST = "liveness-cancel-host"  # its own node name, so the module's emails worker is untouched


@pytest.fixture
def cancellable_emails_worker(data_dir: Path) -> Iterator[str]:
    """An emails worker allowed cancel_consumer/add_consumer (refused by default); its node name."""
    node = f"emails@{CANCELLED_HOST}"
    proc = worker_process(
        "emails",
        data_dir / "emails-cancellable.log",
        [f"--hostname={node}", "--without-mingle", "--without-gossip"],
        {"WORKER_REMOTE_CONTROL_ALLOW": "cancel_consumer,add_consumer"},
        name="emails-cancellable",
    )
    proc.start()
    try:
        wait_until(
            lambda: proc.running and current_app().control.ping(destination=[node], timeout=0.5), timeout=90
        )
        yield node
    finally:
        proc.stop()


def test_a_worker_that_stopped_consuming_its_queue_is_reported_dead(cancellable_emails_worker: str) -> None:
    control, node = current_app().control, cancellable_emails_worker
    probe = liveness("emails", "--hostname", CANCELLED_HOST)
    assert probe.returncode == 0, probe.stderr
    [reply] = cast(Any, control).cancel_consumer("emails", destination=[node], reply=True, timeout=5)
    assert "ok" in reply[node], reply
    assert control.ping(destination=[node], timeout=5)  # still answers ping ...
    probe = liveness("emails", "--hostname", CANCELLED_HOST, "--timeout", "2")
    assert probe.returncode == 1  # ... but serves nobody
    assert probe.stderr.strip() == (
        f"{node}: answers ping but does not consume its queue 'emails' (consumes: nothing); "
        "its tasks wait unserved"
    )
    control.add_consumer("emails", destination=[node], reply=True, timeout=5)
    probe = liveness("emails", "--hostname", CANCELLED_HOST)
    assert probe.returncode == 0, probe.stderr

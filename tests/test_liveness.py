"""`python -m common.liveness SERVICE`: what a container orchestrator calls per worker."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import child_env
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

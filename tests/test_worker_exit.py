"""A worker's exit code tells its supervisor the truth: non-zero when the broker beat it.

Real processes: each test starts its own redis-server and a `sync` worker on it, then takes
the broker away for good or sends the worker SIGTERM, and reads the exit code.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.celery_config import celery_config
from common.settings import SettingsError, load_settings
from devtools.local_redis import LocalRedis
from devtools.processes import ServiceProcess


@pytest.fixture
def broker() -> Iterator[LocalRedis]:
    with LocalRedis() as redis:
        yield redis


def start_worker(broker: LocalRedis, log: Path, **env: str) -> ServiceProcess:
    worker = ServiceProcess(
        "sync",
        "sync.worker",
        ["--without-mingle", "--without-gossip"],
        env={"REDIS_URL": broker.url, "DJANGO_SETTINGS_MODULE": "common.django_settings", **env},
        log=log,
    ).start()
    deadline = time.monotonic() + 90
    while " ready." not in (log.read_text(errors="replace") if log.exists() else ""):
        if not worker.running or time.monotonic() > deadline:
            worker.stop()
            raise AssertionError(f"worker did not become ready:\n{tail(log)}")
        time.sleep(0.1)
    return worker


def wait_exit(worker: ServiceProcess, timeout: float) -> int | None:
    assert worker.proc is not None
    try:
        return worker.proc.wait(timeout)
    except Exception:
        worker.stop(timeout=5)
        return None


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def test_a_worker_whose_broker_is_gone_for_good_exits_non_zero(broker: LocalRedis, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(broker, log, BROKER_CONNECTION_MAX_RETRIES="2")
    broker.stop()  # and never back
    started = time.monotonic()
    code = wait_exit(worker, timeout=90)
    print(f"worker gave up {time.monotonic() - started:.1f} s after Redis stopped, exit code {code}")
    assert code is not None, f"worker still running 90 s after its broker went away:\n{tail(log)}"
    assert code != 0, f"worker gave up on its broker but exited 0:\n{tail(log)}"
    assert "Unrecoverable error" in log.read_text(errors="replace")


def test_a_sigtermed_worker_exits_0(broker: LocalRedis, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(broker, log)
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    code = wait_exit(worker, timeout=30)
    assert code == 0, f"warm shutdown by SIGTERM exited {code}:\n{tail(log)}"


def test_a_cold_stop_is_not_reported_as_success(broker: LocalRedis, tmp_path: Path) -> None:
    """SIGQUIT (Celery's cold shutdown, running tasks killed) leaves no exitcode behind."""
    log = tmp_path / "worker.log"
    worker = start_worker(broker, log)
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGQUIT)
    code = wait_exit(worker, timeout=30)
    assert code == 1, f"cold shutdown by SIGQUIT exited {code}:\n{tail(log)}"


def test_broker_connection_max_retries_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_CONNECTION_MAX_RETRIES", raising=False)
    assert celery_config(load_settings())["broker_connection_max_retries"] == 100
    monkeypatch.setenv("BROKER_CONNECTION_MAX_RETRIES", "Forever")
    assert celery_config(load_settings())["broker_connection_max_retries"] is None
    # kombu gives up at the first failure with 0 (it does not mean "forever"): refused.
    monkeypatch.setenv("BROKER_CONNECTION_MAX_RETRIES", "0")
    with pytest.raises(SettingsError, match="BROKER_CONNECTION_MAX_RETRIES"):
        load_settings()

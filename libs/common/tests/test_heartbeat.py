"""The lease's helper process (common.transport.broker.heartbeat), against a real Redis.

The fault suite (tests/faults/test_gil_hold.py) runs it in real workers: a task holding the
GIL, SIGKILL and SIGTERM. Here: what the owner hands it, and that it alone keeps a lease.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis
from kombu.transport.redis import SentinelManagedSSLConnection
from redis.sentinel import SentinelManagedConnection

from common.transport.broker import heartbeat, ownership, scripts


def _params(redis_url: str) -> dict:
    return dict(redis.Redis.from_url(redis_url).connection_pool.connection_kwargs)


def _lease_age_ms(client: redis.Redis, owner: str) -> float | None:
    score = client.zscore(scripts.OWNERS, owner)
    if score is None:
        return None
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000 - score


def test_the_helper_alone_keeps_the_lease_and_exits_with_the_owner(redis_client, redis_url: str) -> None:
    owner = ownership.Owner(_params(redis_url), dead_after=2, tick=0.2)
    helper = owner._helper
    assert helper is not None and helper.exited() is None
    owner.tick = lambda: None  # type: ignore[method-assign]  # the thread no longer refreshes
    time.sleep(3)  # longer than dead_after
    age = _lease_age_ms(redis_client, owner.id)
    assert age is not None and age < 1000, f"lease {age} ms old: the helper did not refresh it"
    owner.release()
    assert helper.exited() is not None, "the helper outlived its owner's release"
    assert redis_client.zscore(scripts.OWNERS, owner.id) is None


def test_the_password_goes_over_the_pipe_not_the_command_line(redis_url: str) -> None:
    params = {**_params(redis_url), "password": "not-in-ps-7731"}
    helper, why = heartbeat.start(params, owner="test-owner-argv", key="t-owners-argv", interval=3600)
    assert helper is not None, why
    try:
        deadline = time.monotonic() + 5
        while not (cmdline := Path(f"/proc/{helper.pid}/cmdline").read_bytes()):
            assert time.monotonic() < deadline and helper.exited() is None  # empty just after exec
            time.sleep(0.05)
        assert b"not-in-ps-7731" not in cmdline and cmdline.endswith(b"heartbeat.py\x00")
    finally:
        heartbeat.stop(helper)


@pytest.mark.parametrize("cls", [SentinelManagedConnection, SentinelManagedSSLConnection])
def test_sentinel_stays_on_the_thread_and_says_so_once(
    cls: type, redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    params, why = heartbeat.helper_params({"host": "x", "connection_class": cls})
    assert params is None and "sentinel://" in why
    monkeypatch.setattr(ownership, "_warned", set())
    monkeypatch.setattr(heartbeat, "helper_params", lambda p: (None, why))
    with caplog.at_level(logging.WARNING, logger=ownership.__name__):
        owners = [ownership.Owner(_params(redis_url), dead_after=10, tick=3600) for _ in range(2)]
    for owner in owners:
        owner._stop.set()
        assert owner._helper is None
    warnings = [r.getMessage() for r in caplog.records if "run on a thread only" in r.getMessage()]
    assert len(warnings) == 1 and "sentinel://" in warnings[0]

"""pytest plugin: Celery's integration suite on our transport and result backend ("ours").

Loaded by `scripts/celery_compat.py` with `-p scripts.celery_compat_ours` for the second of its
two runs, and by a generated `sitecustomize` in every Python process that run starts (the
suite runs `celery worker` and other commands in subprocesses), so each of them uses ours:

- `redis://` broker URLs select our transport (`common.transport.broker.install()`, as
  `common.celery_config` does), `redis://` result backend URLs our result backend
  (`common.transport.results.BACKEND`, which the platform selects by its full name). The
  alias keeps the URL as it is, so the suite's own `result_backend.startswith('redis')`
  checks still see a Redis backend and run their tests rather than skip them.
- `celery inspect scheduled` answers from the delayed set, as `common.worker.run_worker`
  registers it (`common.transport.broker.scheduled`).
- The suite's `celery_config` fixture (t/integration/conftest.py: broker and backend from
  TEST_BROKER/TEST_BACKEND) gets the platform's transport settings, as
  `common.celery_config.celery_config(settings, worker=True)` makes them:
  `broker_transport_options` (heartbeats, socket timeouts, requeue limit, priorities),
  `result_backend_transport_options` and the result backend's socket timeouts. Only these:
  the rest of the platform's policy (late acks, routes, queues, time limits) is not the
  transport's, and the suite's expectations assume Celery's defaults there. The worker's
  receipt checks (`intake`) are left out: they admit only tasks of the platform's contracts.
- Our backend subscribes to a result's channel when someone waits for it, not at send
  (documented in `common.transport.results`). The two tests that assert the channel is
  subscribed right after `.delay()` and released by `.get()`/`.forget()` run with the
  backend's documented `subscribe_on_send` option, so they check the release, which is
  Celery's semantics we keep; `SUBSCRIBE_ON_SEND_TESTS` lists them and the summary says so.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

# Test ids (relative to t/integration) run with `subscribe_on_send` (module docstring).
SUBSCRIBE_ON_SEND_TESTS = (
    "test_tasks.py::test_task_redis_result_backend::test_asyncresult_forget_cancels_subscription",
    "test_tasks.py::test_task_redis_result_backend::test_asyncresult_get_cancels_subscription",
)

_activated = False


def activate() -> None:
    """Make this process's `redis://` broker and backend URLs ours; idempotent."""
    global _activated
    if _activated:
        return
    from celery.app import backends

    from common.transport import results
    from common.transport.broker import scheduled
    from common.transport.broker import transport as broker

    broker.install()
    for alias in ("redis", "rediss"):
        backends.BACKEND_ALIASES[alias] = results.BACKEND
    backends.BACKEND_ALIASES["sentinel"] = results.SENTINEL_BACKEND
    scheduled.register()
    _activated = True


def platform_config(broker_url: str) -> dict[str, Any]:
    """The transport and result backend settings the platform's worker runs with."""
    from common.celery_config import celery_config
    from common.settings import load_settings

    config = celery_config(load_settings(redis_url=broker_url), worker=True)
    transport_options = dict(config["broker_transport_options"])
    transport_options.pop("intake", None)
    return {
        "broker_transport_options": transport_options,
        "result_backend_transport_options": dict(config["result_backend_transport_options"]),
        "redis_socket_timeout": config["redis_socket_timeout"],
        "redis_socket_connect_timeout": config["redis_socket_connect_timeout"],
    }


def pytest_configure(config: pytest.Config) -> None:
    activate()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    value = yield
    if fixturedef.argname == "celery_config" and isinstance(value, dict):
        # The suite's own fixture (conftest.py wins over a plugin's), completed in place: the
        # session app, the per-test apps and the session worker all read this one dict.
        value.update(platform_config(os.environ.get("TEST_BROKER", value.get("broker_url", ""))))
    return value


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wanted = {f"t/integration/{test_id}" for test_id in SUBSCRIBE_ON_SEND_TESTS}
    for item in items:
        if item.nodeid in wanted:
            options = dict(
                platform_config(os.environ.get("TEST_BROKER", ""))["result_backend_transport_options"]
            )
            options["subscribe_on_send"] = True
            item.add_marker(pytest.mark.celery(result_backend_transport_options=options))

"""Fixtures of the fault suite: a Redis of its own to restart or freeze, and a producer on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from common.celery_config import celery_config
from common.settings import load_settings
from devtools.testing.faults import RestartableRedis


@pytest.fixture(scope="module")
def broker() -> Iterator[RestartableRedis]:
    """A redis-server with its append-only file on; the session's own Redis stays untouched."""
    with RestartableRedis() as r:
        yield r


@pytest.fixture(scope="module")
def app(broker: RestartableRedis) -> Celery:
    """A producer bound to `broker`."""
    app = Celery("fault-producer", set_as_current=False)
    app.conf.update(celery_config(load_settings(redis_url=broker.url)))
    return app

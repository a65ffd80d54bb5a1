"""Fixtures of the web tests: a real sync worker (replays must run somewhere) and the dead-letter store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.test.utils import setup_test_environment, teardown_test_environment

from common.deadletters import DeadLetters
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def sync_worker(data_dir: Path) -> Iterator[Workers]:
    w = Workers(data_dir)
    try:
        w.start(["sync"])
        yield w
    finally:
        w.stop()


@pytest.fixture
def store(redis_url: str) -> Iterator[DeadLetters]:
    client = redis.Redis.from_url(redis_url)
    yield DeadLetters(client)
    client.close()


@pytest.fixture(scope="module")
def django_test_environment() -> Iterator[None]:
    """Django's test set-up (template rendering recorded, locmem mail in this process) for a module."""
    setup_test_environment()
    yield
    teardown_test_environment()

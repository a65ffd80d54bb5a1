"""pytest plugin: every test session gets its own redis-server, SQLite file and data dir.

Set up before Django so the settings every process reads (this one and the worker
processes it starts) point at the same throwaway Redis and database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.local_redis import LocalRedis
from common.sandboxes.smtp import SMTPSink

_redis: LocalRedis | None = None
_data_dir: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _redis, _data_dir
    _data_dir = Path(tempfile.mkdtemp(prefix="jobs-test-"))
    _redis = LocalRedis().start()
    os.environ.update(
        REDIS_URL=_redis.url,
        DATA_DIR=str(_data_dir),
        ENVIRONMENT="test",
        DJANGO_SETTINGS_MODULE="web.settings" if _importable("web") else "common.django_settings",
    )
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("SENTRY_DSN", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _redis is not None:
        _redis.stop()
    if _data_dir is not None:
        shutil.rmtree(_data_dir, ignore_errors=True)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="session")
def redis_url() -> str:
    assert _redis is not None
    return _redis.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert _data_dir is not None
    return _data_dir


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SMTPSink]:
    with SMTPSink() as sink:
        yield sink

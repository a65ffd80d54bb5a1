"""pytest plugin: every platform-tier session gets its own redis-server, database and data dir.

A fast session (its paths all in `fast` directories, or JOBS_TEST_TIER=fast) starts none of
them: `devtools.testing.fast` sets it up instead (in-memory SQLite, the stub broker, no
socket, no process), and the fixtures below fail there, naming the fast ones to use.

Set up before Django so the settings every process reads (this one and the worker
processes it starts) point at the same throwaway Redis and database. The database is
a SQLite file, or, where a test target sets TEST_DATABASE=postgres (row locks), a fresh
PostgreSQL database on TEST_POSTGRES_URL, dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.platform import LocalPlatform
from devtools.sandboxes.crm import CRMSandbox
from devtools.sandboxes.gateway import GatewaySandbox
from devtools.sandboxes.smtp import SMTPSink

# The fast tier's fixtures (jobs, mailbox, gateway, crm) in every session.
pytest_plugins = ["devtools.testing.fast"]

_platform: LocalPlatform | None = None
_data_dir: Path | None = None
_pg_database: str | None = None
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def pytest_configure(config: pytest.Config) -> None:
    global _platform, _data_dir
    from devtools.testing import fast  # registered above (pytest_plugins), so assertions are rewritten

    if fast.is_fast_session(config):
        # Only fast tests (their paths lie in `fast` directories, or JOBS_TEST_TIER=fast): no
        # Redis, no database server, no process; the platform fixtures are not available.
        fast.configure(config)
        return
    _data_dir = Path(tempfile.mkdtemp(prefix="jobs-test-"))
    # The session's own Redis now; the SMTP, CRM and gateway sandboxes when a test asks.
    _platform = LocalPlatform(_data_dir, use_environment=False)
    _platform.start("redis")
    os.environ.update(
        ENVIRONMENT="test",
        DJANGO_SETTINGS_MODULE="web.settings" if _importable("web") else "common.django_settings",
    )
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("SENTRY_DSN", None)
    if os.environ.get("TEST_DATABASE") == "postgres":
        os.environ["DATABASE_URL"] = _create_pg_database()
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def _create_pg_database() -> str:
    global _pg_database
    import secrets

    import psycopg

    _pg_database = f"jobs_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{_pg_database}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{_pg_database}"


def _drop_pg_database() -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_pg_database}" WITH (FORCE)')


def pytest_unconfigure(config: pytest.Config) -> None:
    if _pg_database is not None:
        _drop_pg_database()
    if _platform is not None:
        _platform.stop()
    if _data_dir is not None:
        shutil.rmtree(_data_dir, ignore_errors=True)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _platform_tier() -> None:
    if _platform is None:
        pytest.fail(
            "a platform-tier fixture (a real Redis, peers, processes) in a fast session: move the "
            "test out of its `fast` directory, or use the fast fixtures (jobs, mailbox, gateway, crm)"
        )


@pytest.fixture(scope="session")
def redis_url() -> str:
    _platform_tier()
    assert _platform is not None
    return _platform.peer("redis").url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    _platform_tier()
    assert _data_dir is not None
    return _data_dir


@pytest.fixture(scope="session")
def platform() -> LocalPlatform:
    """The session's local platform (devtools.platform): its peers and its processes."""
    _platform_tier()
    assert _platform is not None
    return _platform


@pytest.fixture(scope="session")
def smtp_sink(platform: LocalPlatform) -> SMTPSink:
    return platform.peer("smtp")


@pytest.fixture(scope="session")
def crm_sandbox(platform: LocalPlatform) -> CRMSandbox:
    return platform.peer("crm")


@pytest.fixture(scope="session")
def gateway_sandbox(platform: LocalPlatform) -> GatewaySandbox:
    return platform.peer("gateway")


@pytest.fixture(scope="session")
def peers_env(
    smtp_sink: SMTPSink, crm_sandbox: CRMSandbox, gateway_sandbox: GatewaySandbox
) -> dict[str, str]:
    """Environment pointing worker processes at this session's peers."""
    return {
        "EMAIL_HOST": smtp_sink.host,
        "EMAIL_PORT": str(smtp_sink.port),
        "CRM_URL": crm_sandbox.url,
        "PAYMENT_GATEWAY_URL": gateway_sandbox.url,
    }


@pytest.fixture(autouse=True)
def _reset_peer_faults(request: pytest.FixtureRequest) -> None:
    for name in ("crm_sandbox", "gateway_sandbox"):
        if name in request.fixturenames:
            server = request.getfixturevalue(name)
            server.faults.__init__()
            server.latency = 0.0
            if hasattr(server, "refused"):
                server.refused.clear()

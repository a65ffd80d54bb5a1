"""The fast tier's pytest plumbing: no Redis, no PostgreSQL, no subprocess, no socket.

A session is fast when every path it was given lies in a directory named `fast`
(`tests/fast/`, `libs/common/tests/fast/`, `services/<svc>/tests/fast/`), or when
JOBS_TEST_TIER=fast (`scripts/test-fast` sets it). Then `devtools.testing.plugin` starts
nothing and calls `configure` here instead:

- settings as a developer's machine has them, except: REDIS_URL points at a closed port
  (nothing may connect to it: the harness publishes to its own transport), SQLite in memory,
  the CRM and the gateway at `.invalid` hosts (answered in-process by `crm` / `gateway`),
  Django's locmem mail backend;
- Django is set up and migrated once; each test starts from that migrated database (a
  SQLite backup of it, restored in a millisecond), an empty mailbox and no queued task;
- every attempt to open a network connection fails (`ConnectionRefusedError`) and is recorded
  in `network_attempts`: a fast test that needs a server fails instead of waiting for one;
- starting a process fails (`ProcessRefusedError`): a test that needs one is a platform test.

The fixtures (`jobs`, `mailbox`, `gateway`, `crm`, `network_attempts`) also work in a
platform session, where they stub the process's own sending only for the test's duration.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.testing.edges import FakeCRM, FakeGateway, mount
from devtools.testing.jobs import Jobs

CLOSED_REDIS = "redis://127.0.0.1:9/0"  # the discard port: closed, and never dialled anyway
FAST_ENV = {
    "ENVIRONMENT": "test",
    "REDIS_URL": CLOSED_REDIS,
    "DATABASE_URL": "sqlite://:memory:",
    "CRM_URL": "http://crm.fast.invalid",
    "PAYMENT_GATEWAY_URL": "http://gateway.fast.invalid",
    "LOG_LEVEL": "WARNING",
}
UNSET = (
    "RESULT_BACKEND_URL",
    "SENTRY_DSN",
    "EMAIL_HOST",
    "EMAIL_PORT",
    "CRM_API_TOKEN",
    "PAYMENT_GATEWAY_API_KEY",
)

_configured = False
_snapshot: sqlite3.Connection | None = None
network_log: list[Any] = []


def is_fast_session(config: pytest.Config) -> bool:
    if os.environ.get("JOBS_TEST_TIER") == "fast":
        return True
    paths = [a.split("::", 1)[0] for a in config.args if not a.startswith("-")]
    return bool(paths) and all("fast" in Path(p).parts for p in paths)


def configure(config: pytest.Config) -> None:
    """Set the fast tier up for this session (called by devtools.testing.plugin)."""
    global _configured
    data_dir = tempfile.mkdtemp(prefix="jobs-fast-")
    Path(data_dir, "static").mkdir()  # the admin's STATIC_ROOT (whitenoise warns when it is missing)
    os.environ.update(FAST_ENV, DATA_DIR=data_dir)
    for name in UNSET:
        os.environ.pop(name, None)
    os.environ["DJANGO_SETTINGS_MODULE"] = (
        "web.settings" if _importable("web.settings") else "common.django_settings"
    )
    _refuse_network()
    _refuse_processes()
    from common.settings import reset_settings_cache

    reset_settings_cache()
    import django
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    django.setup()
    setup_test_environment()  # the locmem mail backend, django.core.mail.outbox
    call_command("migrate", verbosity=0, interactive=False)
    _take_snapshot()
    _configured = True


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class ProcessRefusedError(RuntimeError):
    """A fast test tried to start a process: it belongs in the platform tier."""


def _refuse_processes() -> None:
    import subprocess

    def refuse(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        raise ProcessRefusedError(
            f"the fast tier starts no process ({args!r}): move the test out of its fast/ directory"
        )

    subprocess.Popen.__init__ = refuse  # type: ignore[method-assign]


def _refuse_network() -> None:
    """Any TCP/UDP connect fails at once, recorded: the fast tier needs no server."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            network_log.append(address)
            raise ConnectionRefusedError(f"the fast tier opens no network connection (to {address!r})")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        try:
            connect(self, address)
        except ConnectionRefusedError:
            return 111
        return 0

    socket.socket.connect = connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign, assignment]


def _raw_connection() -> sqlite3.Connection:
    from django.db import connection

    connection.ensure_connection()
    return connection.connection


def _take_snapshot() -> None:
    global _snapshot
    _snapshot = sqlite3.connect(":memory:", check_same_thread=False)
    _raw_connection().backup(_snapshot)


def _restore_snapshot() -> None:
    from django.db import connection

    if connection.in_atomic_block:
        raise RuntimeError("a fast test left a transaction open")
    connection.run_on_commit = []
    assert _snapshot is not None
    _snapshot.backup(_raw_connection())


@pytest.fixture(autouse=True)
def _fast_test_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each fast test on the freshly migrated database, with an empty mailbox.

    In a platform session (a run mixing tiers), a test in a `fast` directory leaves the
    session's SQLite database as it found it instead.
    """
    if _configured:
        from django.core import mail

        _restore_snapshot()
        mail.outbox = []
        yield
        return
    if "fast" not in Path(str(request.path)).parts:
        yield
        return
    from django.db import connection

    if connection.vendor != "sqlite":
        yield
        return
    before = sqlite3.connect(":memory:")
    _raw_connection().backup(before)
    try:
        yield
    finally:
        connection.run_on_commit = []
        before.backup(_raw_connection())
        before.close()


@pytest.fixture
def jobs() -> Iterator[Jobs]:
    """The stub broker for this test: what is published is recorded, `run_all()` runs it."""
    with Jobs() as harness:
        yield harness


@pytest.fixture
def mailbox() -> Iterator[list[Any]]:
    """The mails sent (Django's locmem backend's `mail.outbox`), empty at the start."""
    from django.conf import settings
    from django.core import mail

    previous = settings.EMAIL_BACKEND
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    mail.outbox = []
    try:
        yield mail.outbox
    finally:
        settings.EMAIL_BACKEND = previous


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    """The payment gateway, answered in-process on our HTTP client's session."""
    # The URL the payments service calls. Only its own tests use this fixture, and they depend
    # on it already: devtools declares no dependency on a service (that would put `services/`
    # on every platform test's path under Pants).
    from payments.config import get_payment_settings  # pants: no-infer-dep

    fake = FakeGateway()
    unmount = mount(str(get_payment_settings().gateway_url), fake.http)
    try:
        yield fake
    finally:
        unmount()


@pytest.fixture
def crm() -> Iterator[FakeCRM]:
    """The external CRM, answered in-process on our HTTP client's session."""
    # The URL the sync service calls (only its tests use this fixture: see `gateway`).
    from sync.config import get_crm_settings  # pants: no-infer-dep

    fake = FakeCRM()
    unmount = mount(str(get_crm_settings().url), fake.http)
    try:
        yield fake
    finally:
        unmount()


@pytest.fixture
def fast_session() -> None:
    """Skip the test unless this is a fast session (it checks the fast tier's own environment)."""
    if not _configured:
        pytest.skip("checks the fast session's own environment (run it with scripts/test-fast)")


@pytest.fixture
def network_attempts() -> Callable[[], list[Any]]:
    """`network_attempts()`: the addresses this test tried to connect to (all refused)."""
    start = len(network_log)
    return lambda: network_log[start:]

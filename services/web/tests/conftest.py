"""Fixtures of the web tests: a real sync worker (replays must run somewhere), the dead-letter
store, and the admin as deployed (gunicorn) with a staff operator and headless Chromium."""

from __future__ import annotations

import os
import secrets
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test.utils import setup_test_environment, teardown_test_environment

from common.deadletters import DeadLetters
from devtools.ports import free_port
from devtools.processes import ServiceProcess
from devtools.testing.workers import Workers

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# No background traffic: this machine's network is closed (see the machine notes).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright's sync API keeps an event loop on this thread; the tests' own ORM calls are
# ordinary blocking ones (Django documents this switch for exactly this case).
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


@dataclass(frozen=True)
class Operator:
    """A superuser of this module's admin, who logs in through the login form."""

    username: str
    password: str

    def log_in(self, page: Any) -> None:
        page.goto("/admin/login/")
        page.fill("#id_username", self.username)
        page.fill("#id_password", self.password)
        page.click("input[type=submit]")
        page.wait_for_selector("#user-tools")


@pytest.fixture(scope="module")
def operator() -> Operator:
    from django.contrib.auth import get_user_model

    name = f"operator-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    get_user_model().objects.create_superuser(name, f"{name}@example.com", password)
    return Operator(name, password)


@pytest.fixture
def log_in(operator: Operator) -> Any:
    """`log_in(page)`: the operator logs in through the form."""
    return operator.log_in


@pytest.fixture(scope="module")
def web(data_dir: Path, operator: Operator) -> Iterator[str]:
    """The admin as deployed: gunicorn serving web.manage, on this session's Redis and database."""
    port = free_port()
    log = data_dir / f"web-{port}.log"
    server = ServiceProcess(
        "web",
        "web.manage",
        ["serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env={"DJANGO_SETTINGS_MODULE": "web.settings"},
        log=log,
    ).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2)
            break
        except OSError:
            assert server.running and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
    yield url
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install chromium (scripts/ensure-services does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, web: str) -> Iterator[Any]:
    context = browser.new_context(base_url=web)
    yield context.new_page()
    context.close()


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

"""The admin's operations page against the real thing: Redis, worker processes, gunicorn, Chromium.

Messages really wait on a queue nobody consumes, a real worker starts (and the open page
picks it up on its own), a real task fails for good in that worker, a dead letter is
stored as the transport stores it; the page is read as an operator reads it, in headless
Chromium, and through Django's test client for access and the Redis outage.
"""

from __future__ import annotations

import html
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.test import Client

from common.celery_app import current_app
from common.deadletters import DeadLetters
from common.observability.recent_failures import KEY, recent
from common.settings import reset_settings_cache
from common.transport.dead_letter_store import FAILED
from common.transport.rate_limits import Limit, Limiter, RateLimited
from contracts.declare import Rate
from devtools.ports import free_port
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers
from web.tests.deadletters_testing import envelope

PAGE = "/admin/operations/"
FAILURES = "/admin/operations/failures/"
PII = "grace.hopper@clinic.example"

pytestmark = pytest.mark.usefixtures("django_test_environment")


def cell(page: Any, queue: str, column: str) -> Any:
    return page.locator(f"#queue-{queue} td.{column}")


def staff_client() -> Client:
    user = get_user_model().objects.create_user(f"op-{uuid.uuid4().hex[:8]}", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def test_only_logged_in_staff_reach_the_pages(log_in, page: Any) -> None:
    not_staff = Client()
    not_staff.force_login(get_user_model().objects.create_user(f"u-{uuid.uuid4().hex[:8]}", password="x"))
    for client in (Client(), not_staff):
        for url in (PAGE, FAILURES):
            response = client.get(url)
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
    page.goto(PAGE)
    assert "/admin/login/" in page.url and page.locator("#operations-queues").count() == 0

    # Staff find the page from the admin index.
    log_in(page)
    page.click("#operations-overview a")
    page.wait_for_url(f"**{PAGE}")
    assert page.locator("#operations-queues").is_visible()


def test_messages_waiting_on_a_queue_nobody_consumes(log_in, page: Any, redis_client: redis.Redis) -> None:
    """payments has no worker here: its messages wait, age, and nobody consumes; a countdown is delayed."""
    for key in redis_client.scan_iter(match="payments*", _type="list"):  # the queue, with its priority lists
        redis_client.delete(key)
    app = current_app()
    for appointment_id in (101, 102, 103):
        app.send_task("payments.process_payment", args=[appointment_id], queue="payments")
    log_in(page)
    page.goto(PAGE)
    delayed_before = int(page.locator("#operations-delayed strong").inner_text())
    app.send_task("payments.process_payment", args=[104], queue="payments", countdown=3600)
    time.sleep(1.2)
    page.goto(PAGE)
    assert cell(page, "payments", "length").inner_text() == "3"
    age = cell(page, "payments", "age")
    assert float(age.get_attribute("data-seconds")) >= 1.0 and age.inner_text().endswith(" s")
    assert cell(page, "payments", "consumers").inner_text() == "0"
    assert cell(page, "payments", "workers").inner_text() == "none replied"
    assert int(page.locator("#operations-delayed strong").inner_text()) == delayed_before + 1


def test_an_open_page_shows_a_worker_that_starts_with_its_release(log_in, page: Any, data_dir: Path) -> None:
    """The page reloads itself: a worker started while it is open appears, with its build's release."""
    release = f"emails@7.7.{secrets.randbelow(1000)}-ops"
    log_in(page)
    page.goto(PAGE)
    assert cell(page, "emails", "consumers").inner_text() == "0"
    assert cell(page, "emails", "age").inner_text() == "-"
    workers = Workers(data_dir)
    try:
        names = workers.start(["emails"], env={"emails": {"JOBS_RELEASE": release}})
        from playwright.sync_api import expect

        # No reload from here: the page's own refresh must bring the worker in.
        expect(cell(page, "emails", "consumers")).to_have_text("1", timeout=30_000)
        expect(cell(page, "emails", "workers")).to_contain_text(release, timeout=30_000)
        assert names["emails"] in cell(page, "emails", "workers").inner_text()
        assert release not in cell(page, "sync", "workers").inner_text()
    finally:
        workers.stop()


def test_a_task_failing_for_good_is_listed_without_its_arguments(
    log_in, page: Any, sync_worker: Workers, redis_client: redis.Redis
) -> None:
    """A real sync worker runs a task that raises: the page lists it, with no trace of the argument."""
    data = {"doctor_id": 987_654_321, "valid": True, "problems": [f"call {PII}"]}
    task_id = current_app().send_task("sync.create_account", args=[data], queue="sync").id
    wait_until(lambda: any(f.task_id == task_id for f in recent(redis_client, 200)), timeout=60)
    stored = [raw for raw in redis_client.lrange(KEY, 0, -1) if task_id.encode() in raw]
    assert stored and PII.encode() not in stored[0]

    log_in(page)
    page.goto(PAGE)
    row = page.locator(f"#operations-failures tr.failure[data-task-id='{task_id}']")
    assert row.locator("td.task").inner_text() == "sync.create_account"
    assert row.locator("td.exception").inner_text() == "Doctor.DoesNotExist"
    assert PII not in page.content()

    page.click("#operations-failures-link")
    page.wait_for_url(f"**{FAILURES}")
    row = page.locator(f"#operations-failures tr.failure[data-task-id='{task_id}']")
    assert row.locator("td.exception").inner_text() == "Doctor.DoesNotExist"
    assert PII not in page.content()


def test_a_dead_letter_is_counted_and_its_link_lists_it(log_in, page: Any, store: DeadLetters) -> None:
    log_in(page)
    page.goto(PAGE)
    before = int(cell(page, "reports", "dead-letters").inner_text())
    task_id, raw = envelope([[42], {}, {}], task="reports.generate_large_report")
    entry = store.add(
        queue="reports",
        reason=FAILED,
        detail="test",
        raw=raw,
        task="reports.generate_large_report",
        task_id=task_id,
    )
    page.goto(PAGE)
    assert int(cell(page, "reports", "dead-letters").inner_text()) == before + 1
    cell(page, "reports", "dead-letters").locator("a").click()
    page.wait_for_url("**/admin/deadletters/?queue=reports")
    assert page.locator("tr.deadletter", has_text=entry.id).count() == 1


@pytest.fixture
def redis_gone() -> Iterator[None]:
    """This process's settings name a Redis nobody listens on (the page reads them per request).

    The process's Celery app is made first: made while this lasts, it would keep the dead URL
    for every later test of the file (a send would then wait in the outbox).
    """
    from common.celery_app import current_app

    current_app()
    before = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    reset_settings_cache()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("REDIS_URL", None)
        else:
            os.environ["REDIS_URL"] = before
        reset_settings_cache()


def test_an_unreachable_redis_is_said_plainly(redis_gone: None) -> None:
    client = staff_client()
    for url in (PAGE, FAILURES):
        started = time.monotonic()
        response = client.get(url)
        text = html.unescape(response.content.decode())
        assert response.status_code == 503, url
        assert "Could not reach Redis at redis://127.0.0.1:" in text and "Is Redis running?" in text
        assert time.monotonic() - started < 10


def test_rate_limits_in_use_are_listed_with_their_current_use(redis_client: redis.Redis) -> None:
    """A limit a worker used (here, taken the way the CRM client takes it) shows with its use."""
    limit = Limit(f"crm-{uuid.uuid4().hex[:6]}", Rate(5, 1))
    for _ in range(3):
        Limiter(redis_client).acquire(limit)
    with pytest.raises(RateLimited):
        for _ in range(3):
            Limiter(redis_client).acquire(limit)
    body = staff_client().get(PAGE).content.decode()
    row = body[body.index(f'data-limit="{limit.name}"') :]
    row = row[: row.index("</tr>")]
    assert '<td class="rate">5/s</td>' in row and '<td class="in-window">5</td>' in row, row
    assert '<td class="next">' in row and " s</td>" in row  # the 6th waits: due within the window


def test_held_unique_keys_are_listed_with_their_holder_and_lease_never_their_arguments(
    redis_client: redis.Redis,
) -> None:
    from common.transport.unique_jobs import KEY_PREFIX
    from contracts import sync

    # The page lists at most UNIQUE_ON_PAGE keys, and the doctors other tests saved here each
    # hold a sync's key (nobody consumes sync in this file): start from none.
    for held in redis_client.scan_iter(match=KEY_PREFIX + "*"):
        redis_client.delete(held)
    doctor_id = 880_000 + secrets.randbelow(10_000)
    # Due in ten minutes, the send waits in the delayed set holding its key (a sync worker of an
    # earlier test may still be consuming the queue, and would release it by starting it).
    result = sync.sync_doctor_to_external_system.apply_async((doctor_id,), countdown=600)
    key = sync.sync_doctor_to_external_system.unique_key((doctor_id,))
    assert key is not None
    digest = key.rpartition(":")[2][:12]
    try:
        text = html.unescape(staff_client().get(PAGE).content.decode())
        assert "Held unique keys" in text
        row = next(line for line in text.splitlines() if digest in line)
        assert "sync.sync_doctor_to_external_system" in row and result.id in row and " s</td>" in row
        assert str(doctor_id) not in text  # a hash of the arguments, never the arguments
    finally:
        redis_client.delete("sync", key)

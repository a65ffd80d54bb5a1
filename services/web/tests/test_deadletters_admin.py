"""The admin's dead-letter page through Django's test client: staff only, and its actions work."""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import states
from django.contrib.auth import get_user_model
from django.test import Client
from django.test.utils import setup_test_environment, teardown_test_environment

from common.deadletters import DeadLetter, DeadLetters
from common.deadletters.store import FAILED, INVALID_ARGUMENTS, UNKNOWN_TASK
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers
from web.tests.deadletters_testing import a_queue, dead, envelope, real_message, stored_result

LIST = "/admin/deadletters/"


@pytest.fixture(scope="module", autouse=True)
def test_environment() -> Iterator[None]:
    """Django's test setup: the `testserver` host, and the rendered context on responses."""
    setup_test_environment()
    yield
    teardown_test_environment()


def user(*, staff: bool) -> Any:
    return get_user_model().objects.create_user(f"op-{uuid.uuid4().hex[:8]}", password="x", is_staff=staff)


@pytest.fixture
def operator() -> Client:
    client = Client()
    client.force_login(user(staff=True))
    return client


def page(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return html.unescape(response.content.decode())


def test_only_logged_in_staff_reach_the_page(store: DeadLetters) -> None:
    entry = dead(store, a_queue(), FAILED, b"{}", None)
    anonymous, not_staff = Client(), Client()
    not_staff.force_login(user(staff=False))
    for client in (anonymous, not_staff):
        for response in (
            client.get(LIST),
            client.get(f"{LIST}entry/{entry.id}/"),
            client.post(f"{LIST}purge/", {"ids": [entry.id], "scope": "selected", "confirm": "yes"}),
            client.post(f"{LIST}replay/", {"ids": [entry.id]}),
        ):
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert store.get(entry.id) is not None


def test_changes_need_the_csrf_token(store: DeadLetters) -> None:
    entry = dead(store, a_queue(), FAILED, b"{}", None)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user(staff=True))
    response = client.post(f"{LIST}purge/", {"ids": [entry.id], "scope": "selected", "confirm": "yes"})
    assert response.status_code == 403 and store.get(entry.id) is not None


def test_the_admin_index_links_the_page(operator: Client) -> None:
    assert f'href="{LIST}"' in page(operator.get("/admin/"))


def test_list_filters_counts_and_detail(operator: Client, store: DeadLetters) -> None:
    queue = a_queue()
    task_id, raw = envelope([["x"], {"email": "bo@example.com"}, {}])
    invalid = dead(store, queue, INVALID_ARGUMENTS, raw, task_id, detail="bad value from bo@example.com")
    failed = dead(store, queue, FAILED, b"not json", None)

    text = page(operator.get(LIST, {"queue": queue}))
    assert invalid.id in text and failed.id in text
    assert f"{queue}</a> 2" in text, "counts per queue"
    assert "bad value from [email]" in text and "bo@example.com" not in text
    text = page(operator.get(LIST, {"queue": queue, "reason": FAILED}))
    assert failed.id in text and invalid.id not in text
    text = page(operator.get(LIST, {"queue": queue, "task": "sync.other"}))
    assert "No dead letters match." in text

    text = page(operator.get(f"{LIST}entry/{invalid.id}/"))
    assert task_id in text and '"args": [\n      "x"\n    ]' in text and '"email": "[redacted]"' in text
    assert "bo@example.com" not in text
    response = operator.get(f"{LIST}entry/{queue}/gone/", follow=True)
    assert f"No dead letter with id '{queue}/gone'" in page(response)


def test_replay_reports_each_outcome(sync_worker: Workers, operator: Client, store: DeadLetters) -> None:
    queue = a_queue()
    good_id, good_raw = real_message("sync.echo", [41])
    good = dead(store, queue, UNKNOWN_TASK, good_raw, good_id)
    bad_id, bad_raw = envelope([["forty-one"], {}, {}])
    bad = dead(store, queue, INVALID_ARGUMENTS, bad_raw, bad_id)

    response = operator.post(f"{LIST}replay/", {"ids": [good.id, bad.id], "queue": queue}, follow=True)
    assert response.redirect_chain[-1][0] == f"{LIST}?queue={queue}"
    text = page(response)
    assert f"Replayed {good.id} as sync.echo[{good_id}] on queue sync" in text
    assert f"Refused {bad.id}: the arguments do not fit today's contract: sync.echo(value: int)" in text
    wait_until(lambda: stored_result(good_id)["status"] == states.SUCCESS, timeout=30)
    assert stored_result(good_id)["result"] == 41
    assert store.get(good.id) is None and store.get(bad.id) is not None

    # From the entry's own page, a refusal brings the operator back to it.
    response = operator.post(f"{LIST}replay/", {"ids": [bad.id], "from": "entry"}, follow=True)
    assert response.redirect_chain[-1][0] == f"{LIST}entry/{bad.id}/"
    assert f"Refused {bad.id}" in page(response)


def test_purge_asks_first_then_removes(operator: Client, store: DeadLetters) -> None:
    queue = a_queue()
    selected, other = (dead(store, queue, FAILED, b"{}", None) for _ in range(2))

    text = page(operator.post(f"{LIST}purge/", {"ids": [selected.id], "scope": "selected"}))
    assert "Delete these 1 dead letter(s) for good?" in text and selected.id in text
    assert store.get(selected.id) is not None, "nothing may go before the confirmation"
    response = operator.post(
        f"{LIST}purge/", {"ids": [selected.id], "scope": "selected", "confirm": "yes"}, follow=True
    )
    assert "Removed 1 dead letter(s)." in page(response)
    assert store.get(selected.id) is None and store.get(other.id) is not None

    text = page(operator.post(f"{LIST}purge/", {"queue": queue, "scope": "filtered"}))
    assert "Delete these 1 dead letter(s) for good?" in text
    shown_at = text.split('name="shown_at" value="', 1)[1].split('"', 1)[0]
    time.sleep(0.01)
    late: DeadLetter = dead(store, queue, FAILED, b"{}", None)  # arrives after the page was shown
    response = operator.post(
        f"{LIST}purge/",
        {"queue": queue, "scope": "filtered", "confirm": "yes", "shown_at": shown_at},
        follow=True,
    )
    assert "Removed 1 dead letter(s)." in page(response)
    assert store.get(other.id) is None and store.get(late.id) is not None

"""The admin's dead-letter page through Django's test client: staff with the permission only
(web.view_deadletter / replay_deadletter / purge_deadletter), and its actions work."""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import states
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.test.utils import setup_test_environment, teardown_test_environment

from common.deadletters import DeadLetter, DeadLetters
from common.transport.dead_letter_store import FAILED, INVALID_ARGUMENTS, UNKNOWN_TASK
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


DEADLETTER_PERMISSIONS = ("view_deadletter", "replay_deadletter", "purge_deadletter")


def user(*, staff: bool, permissions: tuple[str, ...] = ()) -> Any:
    made = get_user_model().objects.create_user(f"op-{uuid.uuid4().hex[:8]}", password="x", is_staff=staff)
    made.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="web", codename__in=permissions)
    )
    assert made.user_permissions.count() == len(permissions), "a permission is missing (migrate?)"
    return made


def client_of(*permissions: str) -> Client:
    client = Client()
    client.force_login(user(staff=True, permissions=permissions))
    return client


@pytest.fixture
def operator() -> Client:
    return client_of(*DEADLETTER_PERMISSIONS)


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
    good = dead(store, "sync", UNKNOWN_TASK, good_raw, good_id)  # replay wants its contract's queue
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


def test_a_staff_user_without_permissions_is_refused_everywhere(store: DeadLetters) -> None:
    task_id, raw = real_message("sync.echo", [7])
    entry = dead(store, "sync", UNKNOWN_TASK, raw, task_id)
    nobody = client_of()
    assert nobody.get("/admin/").status_code == 200, "still staff: the admin itself opens"
    assert f'href="{LIST}"' not in page(nobody.get("/admin/")), "no link to what they cannot open"
    queued = store.client.llen("sync")
    for response in (
        nobody.get(LIST),
        nobody.get(f"{LIST}entry/{entry.id}/"),
        nobody.post(f"{LIST}replay/", {"ids": [entry.id]}),
        nobody.post(f"{LIST}purge/", {"ids": [entry.id], "scope": "selected"}),
        nobody.post(f"{LIST}purge/", {"ids": [entry.id], "scope": "selected", "confirm": "yes"}),
        nobody.post(
            f"{LIST}purge/", {"queue": "sync", "scope": "filtered", "confirm": "yes", "shown_at": "9e99"}
        ),
    ):
        assert response.status_code == 403, response.status_code
        assert entry.id not in response.content.decode()
    assert store.get(entry.id) is not None, "neither replayed nor purged"
    assert store.client.llen("sync") == queued, "nothing was sent"
    assert stored_result(task_id)["status"] == states.FAILURE
    store.remove(entry.id)


def test_each_permission_opens_its_own_action_only(sync_worker: Workers, store: DeadLetters) -> None:
    task_id, raw = real_message("sync.echo", [8])
    entry = dead(store, "sync", UNKNOWN_TASK, raw, task_id)

    viewer = client_of("view_deadletter")
    assert f'href="{LIST}"' in page(viewer.get("/admin/"))
    text = page(viewer.get(LIST, {"queue": "sync"}))
    assert entry.id in text and 'name="ids"' not in text, "nothing to select"
    assert "Replay selected" not in text and "Purge" not in text
    text = page(viewer.get(f"{LIST}entry/{entry.id}/"))
    assert task_id in text and 'value="Replay"' not in text and "Purge…" not in text
    assert viewer.post(f"{LIST}replay/", {"ids": [entry.id]}).status_code == 403
    assert viewer.post(f"{LIST}purge/", {"ids": [entry.id], "confirm": "yes"}).status_code == 403
    assert store.get(entry.id) is not None

    purger = client_of("view_deadletter", "purge_deadletter")
    text = page(purger.get(f"{LIST}entry/{entry.id}/"))
    assert "Purge…" in text and 'value="Replay"' not in text
    assert purger.post(f"{LIST}replay/", {"ids": [entry.id]}).status_code == 403

    replayer = client_of("replay_deadletter")  # replaying alone, without reading the list
    assert replayer.get(LIST).status_code == 403
    response = replayer.post(f"{LIST}replay/", {"ids": [entry.id]})
    assert response.status_code == 302
    wait_until(lambda: stored_result(task_id)["status"] == states.SUCCESS, timeout=30)
    assert stored_result(task_id)["result"] == 8 and store.get(entry.id) is None

    other = dead(store, a_queue(), FAILED, b"{}", None)
    assert replayer.post(f"{LIST}purge/", {"ids": [other.id], "confirm": "yes"}).status_code == 403
    response = purger.post(f"{LIST}purge/", {"ids": [other.id], "scope": "selected", "confirm": "yes"})
    assert response.status_code == 302 and store.get(other.id) is None


def test_replay_refuses_a_message_on_another_queue_than_its_contract(
    operator: Client, store: DeadLetters
) -> None:
    # A payments task forged onto the sync queue (whoever can write to Redis): routing by name
    # would make its replay a real charge.
    task_id, raw = real_message("payments.process_payment", [1])
    forged = dead(store, "sync", UNKNOWN_TASK, raw, task_id, task="payments.process_payment")
    queued = store.client.llen("payments")

    response = operator.post(f"{LIST}replay/", {"ids": [forged.id], "from": "entry"}, follow=True)
    text = page(response)
    assert (
        f"Refused {forged.id}: wrong queue: payments.process_payment belongs on queue 'payments' "
        "(its contract), but this message was taken from queue 'sync'" in text
    )
    assert store.get(forged.id) is not None, "a refused dead letter stays"
    assert store.client.llen("payments") == queued, "nothing was sent to the payments queue"
    assert stored_result(task_id)["status"] == states.FAILURE

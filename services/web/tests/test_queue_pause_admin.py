"""The operations page's Pause / Resume buttons and `manage.py queues`, against a real Redis.

Through Django's test client: only staff holding `web.pause_queue` see the buttons, and a POST
without it is refused (403) before anything changes; the buttons are CSRF-protected POSTs;
an unknown queue is refused; a paused queue shows on the page, and the command sees what the
page did (one state, in Redis). The workers' side (nothing starts while paused) is
tests/faults/test_queue_pause.py.
"""

from __future__ import annotations

import html
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client

from common.settings import reset_settings_cache
from common.transport.broker.pause import PAUSED, paused_queues
from devtools.ports import free_port

PAGE = "/admin/operations/"
PAUSE = "/admin/operations/queues/pause/"
RESUME = "/admin/operations/queues/resume/"

pytestmark = pytest.mark.usefixtures("django_test_environment")


def staff(*permissions: str, csrf: bool = False) -> Client:
    user = get_user_model().objects.create_user(f"op-{uuid.uuid4().hex[:8]}", password="x", is_staff=True)
    for permission in permissions:
        app_label, codename = permission.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.delete(PAUSED)
    yield client
    client.delete(PAUSED)
    client.close()


def text(response: Any) -> str:
    return html.unescape(response.content.decode())


def shown_messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_without_the_permission_there_is_no_button_and_a_post_changes_nothing(broker: redis.Redis) -> None:
    client = staff()
    page = text(client.get(PAGE))
    assert 'id="queue-payments"' in page and "Running" in page
    assert "web-queues-pause" not in page and 'value="Pause"' not in page
    assert client.post(PAUSE, {"queue": "payments"}).status_code == 403
    assert paused_queues(broker) == {}
    anonymous = Client().post(PAUSE, {"queue": "payments"})
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    assert paused_queues(broker) == {}


def test_pause_shows_on_the_page_and_resume_ends_it(broker: redis.Redis) -> None:
    client = staff("web.pause_queue")
    page = text(client.get(PAGE))
    assert page.count('value="Pause"') == 4 and "operations-paused" not in page
    assert client.get(PAUSE).status_code == 405, "a change is a POST"

    response = client.post(PAUSE, {"queue": "payments"}, follow=True)
    assert shown_messages(response) == [
        "Paused payments: no worker starts its tasks until it is resumed; running ones finish."
    ]
    [(queue, pause)] = paused_queues(broker).items()
    assert queue == "payments" and pause.by.endswith(" (admin)") and pause.by.startswith("op-")
    page = text(client.get(PAGE))
    assert 'class="queue paused" id="queue-payments"' in page
    assert "Paused (no worker starts their tasks)" in page and 'value="Resume"' in page
    assert page.count('value="Pause"') == 3

    out = _command("status")
    assert "payments  paused since" in out and pause.by in out and "emails    running" in out

    response = client.post(RESUME, {"queue": "payments"}, follow=True)
    assert shown_messages(response) == ["Resumed payments: its waiting tasks start now."]
    assert paused_queues(broker) == {}
    assert shown_messages(client.post(RESUME, {"queue": "payments"}, follow=True)) == [
        "payments was not paused."
    ]


def test_an_unknown_queue_and_a_missing_csrf_token_are_refused(broker: redis.Redis) -> None:
    client = staff("web.pause_queue")
    response = client.post(PAUSE, {"queue": "nosuch<script>"}, follow=True)
    [message] = shown_messages(response)
    assert message.startswith("no queue named nosuch<script>: the queues are ")
    assert "<script>" not in response.content.decode(), "escaped on the page"
    assert staff("web.pause_queue", csrf=True).post(PAUSE, {"queue": "payments"}).status_code == 403
    assert paused_queues(broker) == {}


def _command(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("queues", *args, stdout=out)
    return out.getvalue()


def test_the_command_pauses_resumes_and_refuses_unknown_names(broker: redis.Redis) -> None:
    out = _command(
        "pause", "payments", "--reason", "gateway incident, mail ada@clinic.example", "--by", "alice"
    )
    assert out.startswith("Paused payments: no worker starts its tasks from now on")
    assert "already paused" in _command("pause", "payments", "--by", "bob")
    status = _command("status")
    print(f"\n[queues status]\n{status}")
    assert "by alice: gateway incident" in status and "ada@clinic.example" not in status, "reason masked"
    assert _command("resume", "payments").startswith("Resumed payments (it was paused since ")
    assert _command("resume", "payments") == "payments was not paused.\n"
    with pytest.raises(CommandError, match=r"No queue named paymnts: the queues are emails, payments"):
        _command("pause", "paymnts")
    assert paused_queues(broker) == {}


@pytest.fixture
def redis_gone() -> Iterator[None]:
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
    response = staff("web.pause_queue").post(PAUSE, {"queue": "payments"}, follow=True)
    [message] = shown_messages(response)
    assert message.startswith("Could not reach Redis at redis://127.0.0.1:") and "nothing changed" in message
    with pytest.raises(CommandError, match="Could not reach Redis at"):
        _command("status")

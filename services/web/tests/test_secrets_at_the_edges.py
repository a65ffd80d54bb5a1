"""A broker password never shows where an unreachable Redis is reported: not in its `?password=`
form, nor as userinfo, nor in a Sentinel URL (issue 21, item 10).

The admin's dead-letter page and the `deadletters` command name the Redis they could not reach,
through `common.masking.redact_url`.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.test.utils import setup_test_environment, teardown_test_environment
from django.urls import reverse

from common.settings import reset_settings_cache
from devtools.ports import free_port

SECRET = "s3cret-broker-pw"


def urls() -> dict[str, str]:
    port = free_port()  # nothing listens there: every connection is refused at once
    return {
        "query": f"redis://127.0.0.1:{port}/0?password={SECRET}",
        "userinfo": f"redis://jobs:{SECRET}@127.0.0.1:{port}/0",
        "both": f"redis://:{SECRET}@127.0.0.1:{port}/0?password={SECRET}",
        "sentinel": f"sentinel://:{SECRET}@127.0.0.1:{port};sentinel://:{SECRET}@127.0.0.1:{port}/0",
    }


@pytest.fixture(scope="module", autouse=True)
def test_environment() -> Iterator[None]:
    setup_test_environment()
    yield
    teardown_test_environment()


@pytest.fixture(params=["query", "userinfo", "both", "sentinel"])
def unreachable(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("REDIS_URL", urls()[request.param])
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "jobs")
    monkeypatch.setenv("BROKER_SOCKET_TIMEOUT", "1")
    reset_settings_cache()
    yield request.param
    monkeypatch.undo()
    reset_settings_cache()


def test_the_deadletters_command_error_hides_the_password(unreachable: str) -> None:
    with pytest.raises(CommandError) as err:
        call_command("deadletters", "list")
    assert "Could not reach the dead-letter store" in str(err.value)
    assert SECRET not in str(err.value) and "***" in str(err.value)


def test_the_admin_redis_down_page_hides_the_password(unreachable: str) -> None:
    user = get_user_model().objects.create_user(f"op-{uuid.uuid4().hex[:8]}", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="web"))
    client = Client()
    client.force_login(user)
    response = client.get(reverse("web-deadletters"))
    text = html.unescape(response.content.decode())
    assert response.status_code == 503, response.status_code
    assert "Could not reach the dead-letter store" in text
    assert SECRET not in text and "***" in text

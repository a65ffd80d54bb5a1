"""Admin logins are throttled (django-axes): the real admin login view through Django's test client.

A username that fails AXES_FAILURE_LIMIT times from one address is refused there, right
password or not, until the cool-off passes or an operator resets it; other usernames and
other addresses are not. The address is the one the trusted proxy saw: X-Forwarded-For is
read only from a peer in TRUSTED_PROXIES. Each test uses its own usernames and addresses:
the session's database (and so axes' attempts) is shared by every test.
"""

from __future__ import annotations

import ipaddress
import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

import pytest
from axes.models import AccessAttempt
from axes.utils import reset
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from django.test.utils import setup_test_environment, teardown_test_environment
from django.utils import timezone

LOGIN = "/admin/login/?next=/admin/"
PASSWORD = "right-" + "horse-battery"
LIMIT = settings.AXES_FAILURE_LIMIT


@pytest.fixture(scope="module", autouse=True)
def test_environment() -> Iterator[None]:
    """Django's test setup: the `testserver` host, and the rendered context on responses.

    Passwords hash with a fast hasher here, as Django's own test suites do: what is tested is
    the throttling around the login view, and about 80 logins through PBKDF2's million rounds (Django 5.2)
    made this the slowest file of the platform tier (150 s on a loaded CI machine).
    """
    setup_test_environment()
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield
    teardown_test_environment()


def staff_user() -> str:
    name = f"op-{uuid.uuid4().hex[:8]}"
    get_user_model().objects.create_user(name, password=PASSWORD, is_staff=True)
    return name


def an_address() -> str:
    return "10." + ".".join(str(secrets.randbelow(254) + 1) for _ in range(3))


class Attempt:
    """One login POST from a fresh browser (its own session) at `address`."""

    def __init__(self, username: str, password: str, address: str, **headers: Any) -> None:
        self.client = Client(REMOTE_ADDR=address, **headers)
        self.response = self.client.post(LOGIN, {"username": username, "password": password})

    @property
    def logged_in(self) -> bool:
        return "_auth_user_id" in self.client.session and self.client.get("/admin/").status_code == 200

    @property
    def refused_as_wrong(self) -> bool:
        # The login form again, with its error: counted, not (yet) locked out.
        return self.response.status_code == 200 and "errornote" in self.response.content.decode()

    @property
    def locked_out(self) -> bool:
        return (
            self.response.status_code == cast(Any, settings).AXES_HTTP_RESPONSE_CODE == 429
            and "Account locked" in self.response.content.decode()
            and not self.logged_in
        )


def lock_out(username: str, address: str, **headers: str) -> None:
    """Fail LIMIT times: all but the last are wrong passwords, the last one locks the pair out."""
    for _ in range(LIMIT - 1):
        assert Attempt(username, "wrong", address, **headers).refused_as_wrong
    assert Attempt(username, "wrong", address, **headers).locked_out


def test_the_limit_is_the_configured_one() -> None:
    assert LIMIT == 5  # ADMIN_LOGIN_FAILURE_LIMIT's default
    assert settings.AXES_COOLOFF_TIME == timedelta(minutes=15)


def test_after_the_limit_even_the_right_password_is_refused() -> None:
    username, address = staff_user(), an_address()
    lock_out(username, address)
    attempt = Attempt(username, PASSWORD, address)
    assert attempt.locked_out
    assert not attempt.logged_in


def test_another_username_or_another_address_is_not_locked() -> None:
    username, other, address = staff_user(), staff_user(), an_address()
    lock_out(username, address)
    assert Attempt(other, PASSWORD, address).logged_in  # same address, another username
    assert Attempt(username, PASSWORD, an_address()).logged_in  # same username, elsewhere
    assert Attempt(username, PASSWORD, address).locked_out  # the pair itself still is


def test_the_lockout_ends_after_the_cool_off() -> None:
    username, address = staff_user(), an_address()
    lock_out(username, address)
    attempts = AccessAttempt.objects.filter(username=username, ip_address=address)
    attempts.update(attempt_time=timezone.now() - timedelta(minutes=14))
    assert Attempt(username, PASSWORD, address).locked_out  # a minute early (which restarts it)
    attempts.update(attempt_time=timezone.now() - timedelta(minutes=15, seconds=1))
    assert Attempt(username, PASSWORD, address).logged_in


def test_an_operator_reset_ends_the_lockout_at_once() -> None:
    username, address = staff_user(), an_address()
    lock_out(username, address)
    assert reset(username=username) == 1
    assert Attempt(username, PASSWORD, address).logged_in


def test_a_successful_login_resets_the_count() -> None:
    username, address = staff_user(), an_address()
    for _ in range(2):  # twice one short of the limit, a success between: never locked
        for _ in range(LIMIT - 1):
            assert Attempt(username, "wrong", address).refused_as_wrong
        assert Attempt(username, PASSWORD, address).logged_in
    assert not AccessAttempt.objects.filter(username=username).exists()


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
def test_behind_the_proxy_the_client_is_the_address_the_proxy_appended() -> None:
    # Every request comes from the proxy (127.0.0.1, trusted by default: TRUSTED_PROXIES unset);
    # what precedes the proxy's own X-Forwarded-For entry is the client's to invent and must
    # not dodge the lockout.
    username, client, other_client = staff_user(), an_address(), an_address()
    for _ in range(LIMIT - 1):
        forged = f"{an_address()}, {client}"
        assert Attempt(username, "wrong", "127.0.0.1", HTTP_X_FORWARDED_FOR=forged).refused_as_wrong
    assert Attempt(username, "wrong", "127.0.0.1", HTTP_X_FORWARDED_FOR=client).locked_out
    assert AccessAttempt.objects.get(username=username).ip_address == client
    forged = f"{an_address()}, {client}"
    assert Attempt(username, PASSWORD, "127.0.0.1", HTTP_X_FORWARDED_FOR=forged).locked_out
    assert Attempt(username, PASSWORD, "127.0.0.1", HTTP_X_FORWARDED_FOR=other_client).logged_in


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
def test_rotating_x_forwarded_for_from_an_untrusted_address_is_locked_out() -> None:
    # Production settings, gunicorn reached without the proxy: the peer is not a trusted proxy,
    # so what it writes in X-Forwarded-For is ignored and its own address counts.
    username, attacker = staff_user(), an_address()
    assert not any(ipaddress.ip_address(attacker) in n for n in settings.TRUSTED_PROXIES)
    for _ in range(LIMIT - 1):
        assert Attempt(username, "wrong", attacker, HTTP_X_FORWARDED_FOR=an_address()).refused_as_wrong
    assert Attempt(username, "wrong", attacker, HTTP_X_FORWARDED_FOR=an_address()).locked_out
    assert AccessAttempt.objects.get(username=username).ip_address == attacker
    assert Attempt(username, PASSWORD, attacker, HTTP_X_FORWARDED_FOR=an_address()).locked_out


@override_settings(
    SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
    TRUSTED_PROXIES=(ipaddress.ip_network("172.30.0.10/32"), ipaddress.ip_network("10.250.0.0/24")),
)
def test_through_a_chain_of_trusted_proxies_the_client_is_the_first_untrusted_address() -> None:
    # Compose's proxy (172.30.0.10) behind a load balancer (10.250.0.x): each appends its peer.
    username, client = staff_user(), an_address()
    for _ in range(LIMIT - 1):
        chain = f"{an_address()}, {client}, 10.250.0.7"
        assert Attempt(username, "wrong", "172.30.0.10", HTTP_X_FORWARDED_FOR=chain).refused_as_wrong
    chain = f"{client}, 10.250.0.8"
    assert Attempt(username, "wrong", "172.30.0.10", HTTP_X_FORWARDED_FOR=chain).locked_out
    assert AccessAttempt.objects.get(username=username).ip_address == client
    # The same forged header from a peer that is not one of the proxies counts against that peer.
    other = staff_user()
    for _ in range(LIMIT - 1):
        chain = f"{an_address()}, 10.250.0.7"
        assert Attempt(other, "wrong", "172.30.0.11", HTTP_X_FORWARDED_FOR=chain).refused_as_wrong
    assert Attempt(other, "wrong", "172.30.0.11", HTTP_X_FORWARDED_FOR=chain).locked_out


@override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"), TRUSTED_PROXIES=())
def test_with_no_trusted_proxy_x_forwarded_for_is_never_read() -> None:
    username = staff_user()
    for _ in range(LIMIT - 1):
        assert Attempt(username, "wrong", "127.0.0.1", HTTP_X_FORWARDED_FOR=an_address()).refused_as_wrong
    assert Attempt(username, "wrong", "127.0.0.1", HTTP_X_FORWARDED_FOR=an_address()).locked_out
    assert AccessAttempt.objects.get(username=username).ip_address == "127.0.0.1"


def test_trusted_proxies_is_read_from_the_environment() -> None:
    from web.settings import _trusted_proxies

    loopback = {str(n) for n in _trusted_proxies(None)}
    assert loopback == {"127.0.0.1/32", "::1/128"}, "unset: the systemd units' local proxy"
    assert _trusted_proxies("[]") == ()
    assert [str(n) for n in _trusted_proxies('["172.30.0.10", "10.0.0.0/24"]')] == [
        "172.30.0.10/32",
        "10.0.0.0/24",
    ]
    for wrong in ("172.30.0.10", '["not-an-address"]', '{"a": 1}'):
        with pytest.raises(SystemExit, match="TRUSTED_PROXIES: must be a JSON list"):
            _trusted_proxies(wrong)


def test_without_a_proxy_x_forwarded_for_is_ignored() -> None:
    # TLS at gunicorn (no SECURE_PROXY_SSL_HEADER): the header is the client's own invention.
    username, address = staff_user(), an_address()
    for _ in range(LIMIT - 1):
        assert Attempt(username, "wrong", address, HTTP_X_FORWARDED_FOR=an_address()).refused_as_wrong
    assert Attempt(username, "wrong", address, HTTP_X_FORWARDED_FOR=an_address()).locked_out
    assert Attempt(username, PASSWORD, address, HTTP_X_FORWARDED_FOR=an_address()).locked_out

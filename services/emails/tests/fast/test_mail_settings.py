"""The emails service's own settings (emails.config.MailSettings): the SMTP relay, the sender and
the admin's address, from the variables users set before the move (EMAIL_*, DEFAULT_FROM_EMAIL,
ADMIN_EMAIL).

The mailer opens its connection with them (a backend that records what it was opened with
stands in for SMTP); production refuses a remote relay without TLS in the same line as before,
and TLS with SSL is refused everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core.mail.backends.locmem import EmailBackend
from django.test import override_settings

from common.settings import SettingsError, load_service_settings
from contracts import emails
from emails.config import MailSettings, get_mail_settings, load_mail_settings

OPENED: list[dict[str, Any]] = []


class RecordingSMTP(EmailBackend):
    """locmem, remembering the connection parameters it was opened with."""

    def __init__(self, **kwargs: Any) -> None:
        OPENED.append(kwargs)
        super().__init__(**kwargs)


@pytest.fixture
def mail_env(monkeypatch: pytest.MonkeyPatch, mailbox: list) -> Iterator[pytest.MonkeyPatch]:
    """Set the mail variables for one test; the service's cached settings are read afresh around it."""
    for name in MailSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    get_mail_settings.cache_clear()
    OPENED.clear()
    with override_settings(EMAIL_BACKEND=f"{__name__}.RecordingSMTP"):
        yield monkeypatch
    monkeypatch.undo()
    get_mail_settings.cache_clear()


def test_mail_goes_through_the_configured_relay_from_the_configured_sender(mail_env, jobs, mailbox) -> None:
    for name, value in {
        "EMAIL_HOST": "smtp.example.com",
        "EMAIL_PORT": "465",
        "EMAIL_HOST_USER": "jobs",
        "EMAIL_HOST_PASSWORD": "smtp-hunter2",
        "EMAIL_USE_SSL": "true",
        "EMAIL_TIMEOUT": "7.5",
        "DEFAULT_FROM_EMAIL": "jobs@clinic.example",
        "ADMIN_EMAIL": "ops@clinic.example",
    }.items():
        mail_env.setenv(name, value)
    emails.notify_admin.delay(7)
    jobs.run_all()
    (mail,) = mailbox
    assert (mail.from_email, mail.to) == ("jobs@clinic.example", ["ops@clinic.example"])
    (opened,) = OPENED
    assert opened == {
        "fail_silently": False,
        "host": "smtp.example.com",
        "port": 465,
        "username": "jobs",
        "password": "smtp-hunter2",
        "use_tls": False,
        "use_ssl": True,
        "timeout": 7.5,
    }


def test_the_defaults_are_the_local_sink(mail_env) -> None:
    s = load_mail_settings()
    assert (s.email_host, s.email_port, s.email_use_tls, s.email_use_ssl) == ("127.0.0.1", 1025, False, False)
    assert (s.default_from_email, s.admin_email) == ("noreply@example.com", "admin@example.com")


def test_a_wrong_port_is_named(mail_env) -> None:
    mail_env.setenv("EMAIL_PORT", "smtp")
    with pytest.raises(SettingsError) as err:
        load_mail_settings()
    assert str(err.value).splitlines()[1].startswith("  EMAIL_PORT: ")


def test_a_remote_relay_without_tls_is_refused_in_production(mail_env) -> None:
    mail_env.setenv("EMAIL_HOST", "smtp.example.com")
    with pytest.raises(SettingsError) as err:
        load_service_settings(MailSettings, environment="production")
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(
        "  EMAIL_USE_TLS: must be true in production when EMAIL_HOST is not this machine"
    )
    assert load_service_settings(MailSettings, environment="staging").email_host == "smtp.example.com"
    mail_env.setenv("EMAIL_USE_TLS", "true")
    assert load_service_settings(MailSettings, environment="production").email_use_tls is True
    mail_env.setenv("EMAIL_USE_TLS", "false")
    mail_env.setenv("EMAIL_USE_SSL", "true")  # implicit TLS (465) is as good
    assert load_service_settings(MailSettings, environment="production").email_use_ssl is True


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "[::1]"])
def test_a_relay_on_this_machine_needs_no_tls(mail_env, host: str) -> None:
    mail_env.setenv("EMAIL_HOST", host)
    assert load_service_settings(MailSettings, environment="production").email_host == host


def test_tls_and_ssl_together_are_refused_everywhere(mail_env) -> None:
    mail_env.setenv("EMAIL_USE_TLS", "true")
    mail_env.setenv("EMAIL_USE_SSL", "true")
    for environment in ("development", "production"):
        with pytest.raises(SettingsError) as err:
            load_service_settings(MailSettings, environment=environment)
        assert str(err.value).splitlines()[1].startswith("  EMAIL_USE_SSL: cannot be true with EMAIL_USE_TLS")


def test_the_password_is_never_shown(mail_env) -> None:
    mail_env.setenv("EMAIL_HOST_PASSWORD", "smtp-hunter2")
    s = load_mail_settings()
    assert s.email_host_password.get_secret_value() == "smtp-hunter2"
    assert "hunter2" not in repr(s) + str(s) + s.model_dump_json()

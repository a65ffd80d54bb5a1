"""The emails service's own settings: the SMTP relay it sends through, the sender, the admin's address.

Only this service sends mail (`emails.mailer`), so only its worker reads, and refuses in
production, these variables (`common.settings.ServiceSettings`). No Django setting carries them:
the mailer opens its SMTP connection with them.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from pydantic import Field, PositiveFloat, PositiveInt, SecretStr, model_validator

from common.settings import ServiceSettings, is_loopback, load_service_settings


class MailSettings(ServiceSettings):
    email_host: str = Field("127.0.0.1", description="SMTP server.")
    email_port: PositiveInt = Field(
        1025, description="SMTP port (587 with EMAIL_USE_TLS, 465 with EMAIL_USE_SSL)."
    )
    email_host_user: str = Field("", description="SMTP user name; empty: no login.")
    email_host_password: SecretStr = Field(SecretStr(""), description="SMTP password.")
    email_use_tls: bool = Field(
        False,
        description="STARTTLS (port 587); production needs it or EMAIL_USE_SSL unless the relay is local.",
    )
    email_use_ssl: bool = Field(False, description="Implicit TLS (port 465); not with EMAIL_USE_TLS.")
    email_timeout: PositiveFloat = Field(30, description="Seconds an SMTP operation may take.")
    default_from_email: str = Field("noreply@example.com", description="Sender of the mails.")
    admin_email: str = Field("admin@example.com", description="Recipient of the admin notifications.")

    @model_validator(mode="after")
    def _one_security_mode(self) -> MailSettings:
        if self.email_use_tls and self.email_use_ssl:
            raise ValueError(
                "EMAIL_USE_SSL: cannot be true with EMAIL_USE_TLS; choose one "
                "(EMAIL_USE_TLS: STARTTLS, port 587; EMAIL_USE_SSL: implicit TLS, port 465)"
            )
        return self

    def production_problems(self) -> Iterator[str]:
        if not (self.email_use_tls or self.email_use_ssl) and not is_loopback(self.email_host):
            yield (
                "EMAIL_USE_TLS: must be true in production when EMAIL_HOST is not this machine "
                "(STARTTLS, port 587; or EMAIL_USE_SSL=true, port 465); without TLS only a relay "
                "on localhost may be used"
            )


def load_mail_settings() -> MailSettings:
    """Read the environment; `SettingsError` naming each wrong (in production, each unsafe) variable."""
    return load_service_settings(MailSettings)


@lru_cache(maxsize=1)
def get_mail_settings() -> MailSettings:
    return load_mail_settings()

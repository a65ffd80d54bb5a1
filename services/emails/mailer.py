"""Sending one mail through the relay `emails.config` names: the service's one way out to SMTP.

The connection is opened with the service's own settings (host, port, login, TLS, timeout),
not Django's EMAIL_* (no other deployable sends mail, so none configures it). The backend
class stays Django's EMAIL_BACKEND: SMTP in production, locmem in the tests.
"""

from __future__ import annotations

from django.core.mail import get_connection, send_mail

from emails.config import get_mail_settings


def send(*, subject: str, body: str, to: list[str]) -> None:
    """Send `body` to `to` from DEFAULT_FROM_EMAIL; SMTP errors propagate (the tasks retry them)."""
    s = get_mail_settings()
    connection = get_connection(
        host=s.email_host,
        port=s.email_port,
        username=s.email_host_user,
        password=s.email_host_password.get_secret_value(),
        use_tls=s.email_use_tls,
        use_ssl=s.email_use_ssl,
        timeout=s.email_timeout,
    )
    send_mail(
        subject=subject,
        message=body,
        from_email=s.default_from_email,
        recipient_list=to,
        connection=connection,
    )

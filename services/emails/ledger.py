"""The sent-mail ledger: a mail goes out at most once per purpose key, however often its task
is delivered."""

from __future__ import annotations

from django.utils import timezone

from common.models import SentEmail
from common.transport.locks import task_lock
from emails import mailer


class MailBusyError(RuntimeError):
    """Another worker is sending this very mail right now; retry later."""


def send_once(key: str, *, subject: str, body: str, to: list[str]) -> bool:
    """Return True if sent now, False if it had been sent before.

    A Redis lock serialises concurrent deliveries; the ledger row remembers success.
    If the process dies between the SMTP send and the ledger write, the redelivery
    sends again: at-least-once, never silently zero.
    """
    with task_lock(f"mail:{key}", timeout=120) as acquired:
        if not acquired:
            raise MailBusyError(key)
        entry, _ = SentEmail.objects.get_or_create(key=key, defaults={"subject": subject})
        if entry.sent_at is not None:
            return False
        mailer.send(subject=subject, body=body, to=to)
        entry.sent_at = timezone.now()
        entry.save(update_fields=["sent_at"])
        return True

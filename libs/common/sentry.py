"""`sentry_sdk.init` once per process, for workers, beat and web alike."""

from __future__ import annotations

from typing import Any

from common.pii import PII_KEYS, mask
from common.settings import get_settings

_initialised = False


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """`before_send`: mask emails and names anywhere in the event."""
    masked = mask(event)
    user = masked.get("user")
    if isinstance(user, dict):
        masked["user"] = {k: v for k, v in user.items() if k == "id"}
    return masked


def init_sentry(service: str) -> bool:
    """Initialise Sentry if SENTRY_DSN is set; return whether it is on."""
    global _initialised
    settings = get_settings()
    if _initialised or settings.sentry_dsn is None:
        return _initialised
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.environment,
        release=f"{service}@{settings.release}",
        send_default_pii=False,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        integrations=[CeleryIntegration(monitor_beat_tasks=True), DjangoIntegration()],
        event_scrubber=EventScrubber(denylist=DEFAULT_DENYLIST + sorted(PII_KEYS)),
        before_send=scrub_event,
    )
    sentry_sdk.set_tag("service", service)
    _initialised = True
    return True

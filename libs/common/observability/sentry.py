"""`sentry_sdk.init` once per process, for workers, beat and web alike.

Cron check-ins: sentry-sdk's Celery integration with `monitor_beat_tasks=True`. Beat (it patches
`celery.beat.Scheduler.apply_entry`, which django-celery-beat's DatabaseScheduler and our
`LeaderDatabaseScheduler` inherit) sends `in_progress` for each due job, with the periodic task's
name as the monitor slug and its schedule as the monitor config, and puts slug and check-in id in
the message headers; the worker that runs the task sends `ok` on success and `error` on failure
(and on each retry) under that id. A worker needs no schedule table: the headers say it all.
Only crontabs and whole-minute intervals can be Sentry monitors; beat logs the others once
(`cron_monitor_problem`), see services/scheduler/tests/test_cron_checkins.py.
"""

from __future__ import annotations

from typing import Any, cast

from celery.exceptions import Ignore, Reject, Retry

from common.masking import PII_KEYS, mask
from common.settings import get_settings

_initialised = False
CONTROL_FLOW = (Retry, Ignore, Reject)  # a task deciding its fate, not an error
# What is kept of all an event's strings together (each is already cut by the SDK's serializer);
# the masking is bounded by it, not by what a task's failure put in the event.
SENTRY_EVENT_CHARS = 256 * 1024


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """`before_send`: drop Celery's control-flow exceptions; mask personal data and secrets
    (by key and by pattern, bounded: `common.masking`)."""
    exc_info = (hint or {}).get("exc_info")
    if exc_info and isinstance(exc_info[1], CONTROL_FLOW):
        return None
    masked = mask(event, total=SENTRY_EVENT_CHARS)
    user = masked.get("user")
    if isinstance(user, dict):
        masked["user"] = {k: v for k, v in user.items() if k == "id"}
    return masked


def cron_monitor_problem(schedule: Any) -> str | None:
    """Why Sentry Crons cannot monitor a beat `schedule` (and the SDK skips it silently), or None."""
    from celery.schedules import crontab
    from celery.schedules import schedule as interval

    if isinstance(schedule, crontab):
        return None
    if isinstance(schedule, interval):
        seconds = schedule.seconds
        if seconds < 60:
            return f"{seconds:g} s is shorter than a minute"
        if seconds % 60:
            return f"{seconds:g} s is no whole number of minutes"
        return None
    return f"a {type(schedule).__name__} schedule is no crontab or interval"


def cron_check_ins_on() -> bool:
    """Whether this process sends beat check-ins (Sentry on, with `monitor_beat_tasks`)."""
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration

    integration = sentry_sdk.get_client().get_integration(CeleryIntegration)
    return bool(integration is not None and integration.monitor_beat_tasks)


def init_sentry(service: str) -> bool:
    """Initialise Sentry if SENTRY_DSN is set; return whether it is on."""
    global _initialised
    settings = get_settings()
    if _initialised or settings.sentry_dsn is None:
        return _initialised
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import ignore_logger
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.environment,
        release=settings.release_for(service),
        send_default_pii=False,
        # Frame locals are reprs of task arguments and rows, where names hide in free text
        # no scrubber can find: leave them out. Likewise request bodies.
        include_local_variables=False,
        max_request_body_size="never",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        integrations=[CeleryIntegration(monitor_beat_tasks=True), DjangoIntegration()],
        event_scrubber=EventScrubber(denylist=DEFAULT_DENYLIST + sorted(PII_KEYS)),
        before_send=cast(Any, scrub_event),  # sentry-sdk types an event as a TypedDict: a dict here
    )
    # The Celery integration reports each task failure once (and skips Retry/Ignore/Reject);
    # the failure log lines of Celery and of our handler would report it again.
    ignore_logger("celery.app.trace")
    ignore_logger("common.task_failure")
    sentry_sdk.set_tag("service", service)
    _initialised = True
    return True

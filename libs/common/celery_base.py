"""The configured Celery app, without the hooks above it, and the process's current app.

`common.celery_app.create_app` (the top of the shared library) builds on this: it adds what
lives above sending (contracts' `.delay()` bound to `common.calls`, the dead-letter failure
receiver, the recent-failures list). Publishing, the outbox relay and sending sit below it and
take their app from here, so they never import the layer that installs them.
"""

from __future__ import annotations

import os
from typing import Any, cast

from celery import Celery
from celery import current_app as celery_current

from common.celery_config import celery_config
from common.db_connections import install_connection_reuse
from common.observability.reporting import install_error_reporting
from common.routing import SERVICES
from common.settings import get_settings

DJANGO_SETTINGS = "common.django_settings"
_apps: dict[str, Celery] = {}


def configured_app(service: str, *, include: tuple[str, ...] = ()) -> Celery:
    """A configured app for `service`, made once per process; Django is set up so tasks can use the ORM."""
    if service in _apps:
        return _apps[service]
    # Set before Celery() so its Django fixup (DB connection hygiene per task) installs.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DJANGO_SETTINGS)
    import django

    django.setup()

    app = Celery(service, include=list(include))
    # A queue service checks each message on receipt (common.transport.intake); producers do not.
    app.conf.update(celery_config(get_settings(), worker=service in SERVICES))
    app.set_default()
    install_connection_reuse(app)
    install_error_reporting(service)
    _apps[service] = app
    return app


def current_app() -> Celery:
    """The process's own app, or a producer-only app for code that is no service."""
    app = cast(Any, celery_current)._get_current_object()
    if app in _apps.values():
        return app
    return configured_app("producer")

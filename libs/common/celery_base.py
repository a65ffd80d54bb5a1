"""The configured Celery app, without the hooks above it, and the process's current app.

`common.celery_app.create_app` (the top of the shared library) builds on this: it adds what
lives above sending (contracts' `.delay()` bound to `common.calls`, a worker service's hooks).
Publishing, the outbox relay and sending sit below it and take their app from here, so they
never import the layer that installs hooks.

Every app, a producer-only one made here by `current_app()` included, gets the hooks
`common.process_hooks` declares for every app. That list sits above this module, so it hands
them down: it calls `set_app_hooks` when imported, and Django's app registry imports it
(`common.apps`) during the `django.setup()` that `configured_app` runs before making an app.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, cast

from celery import Celery
from celery import current_app as celery_current
from django.core.exceptions import ImproperlyConfigured

from common.celery_config import celery_config
from common.routing import SERVICES
from common.settings import get_settings

DJANGO_SETTINGS = "common.django_settings"
_apps: dict[str, Celery] = {}

AppHook = Callable[[Celery], None]
_app_hooks: list[AppHook] = []  # in order; set by common.process_hooks


def set_app_hooks(hooks: Sequence[AppHook]) -> None:
    """The installs `configured_app` runs, in order, on each app it makes (common.process_hooks)."""
    _app_hooks[:] = hooks


def app_hooks() -> list[AppHook]:
    """The installs every app gets, in the order they run."""
    return list(_app_hooks)


def configured_app(service: str, *, include: tuple[str, ...] = ()) -> Celery:
    """A configured app for `service`, made once per process; Django is set up so tasks can use the ORM."""
    if service in _apps:
        return _apps[service]
    # Set before Celery() so its Django fixup (DB connection hygiene per task) installs.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DJANGO_SETTINGS)
    import django

    django.setup()  # loads common.apps, which imports common.process_hooks: the hooks are set
    if not _app_hooks:
        raise ImproperlyConfigured(
            "no process hooks: the Django settings must list 'common' in INSTALLED_APPS "
            "(its AppConfig sets the hooks every app installs)"
        )

    app = Celery(service, include=list(include))
    # A queue service checks each message on receipt (common.transport.intake); producers do not.
    app.conf.update(celery_config(get_settings(), worker=service in SERVICES))
    app.set_default()
    for install in _app_hooks:
        install(app)
    _apps[service] = app
    return app


def current_app() -> Celery:
    """The process's own app, or a producer-only app for code that is no service."""
    app = cast(Any, celery_current)._get_current_object()
    if app in _apps.values():
        return app
    return configured_app("producer")

"""The Celery app factory every service, beat, flower and the web side use."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from celery import Celery

from contracts.declare import TaskContract

DJANGO_SETTINGS = "common.django_settings"
_apps: dict[str, Celery] = {}


def create_app(service: str, *, include: tuple[str, ...] = ()) -> Celery:
    """A configured app for `service`; Django is set up so tasks can use the ORM."""
    if service in _apps:
        return _apps[service]
    # Set before Celery() so its Django fixup (DB connection hygiene per task) installs.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", DJANGO_SETTINGS)
    import django

    django.setup()

    from common.celery_config import celery_config
    from common.db_connections import install_connection_reuse
    from common.observability.reporting import install_error_reporting
    from common.routing import SERVICES
    from common.settings import get_settings

    app = Celery(service, include=list(include))
    # A queue service checks each message on receipt (common.transport.intake); producers do not.
    app.conf.update(celery_config(get_settings(), worker=service in SERVICES))
    app.set_default()
    import common.calls  # noqa: F401 - binds contracts' .delay() and friends to sending
    install_connection_reuse(app)
    install_error_reporting(service)
    if service in SERVICES:
        from common.deadletters import failures
        from common.observability import recent_failures

        failures.install()  # tasks that opt in keep their final failure for replay
        recent_failures.install()  # the admin's operations page lists the last ones
    _apps[service] = app
    return app


def current_app() -> Celery:
    """The process's own app, or a producer-only app for code that is no service."""
    from celery import current_app as celery_current

    app = celery_current._get_current_object()
    if app in _apps.values():
        return app
    return create_app("producer")


def implements(app: Celery, contract: TaskContract, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Register `fn` as the task `contract` declares; refuse parameters that drift from it."""

    def register(fn: Callable[..., Any]) -> Any:
        params = list(inspect.signature(fn).parameters)
        if options.get("bind"):
            params = params[1:]
        if tuple(params) != contract.parameters:
            raise TypeError(
                f"{fn.__module__}.{fn.__qualname__}{tuple(params)} does not match the contract "
                f"declaration {contract.name}{contract.signature}"
            )
        return app.task(name=contract.name, shared=False, **options)(fn)

    return register

"""The Celery app factory every service, beat, flower and the web side use: the top of `common`.

`create_app` is the configured app (`common.celery_base`) plus what sits above sending:
contracts' `.delay()` and friends bound to `common.calls` (on import of this module), and in a
service the final-failure receivers (the dead-letter store's `failures`, the operations page's
`recent_failures`). Every task `implements` registers checks at its start for a revoke that
arrived while it waited in a worker's prefetch (`common.cancellation`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from celery import Celery

import common.calls  # noqa: F401 - binds contracts' .delay() and friends to sending
from common import cancellation
from common.celery_base import DJANGO_SETTINGS, configured_app, current_app
from common.deadletters import failures
from common.observability import recent_failures
from common.routing import SERVICES
from contracts.declare import TaskContract

__all__ = ["DJANGO_SETTINGS", "create_app", "current_app", "implements"]


def create_app(service: str, *, include: tuple[str, ...] = ()) -> Celery:
    """A configured app for `service`; Django is set up so tasks can use the ORM."""
    app = configured_app(service, include=include)
    if service in SERVICES:
        failures.install()  # tasks that opt in keep their final failure for replay
        recent_failures.install()  # the admin's operations page lists the last ones
        cancellation.install()  # a task stopped by a revoke ends REVOKED
    return app


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
        # A plain function as a class attribute: Celery calls it as the task's method.
        options.setdefault("before_start", cancellation.check_at_start)
        return app.task(name=contract.name, shared=False, **options)(fn)

    return register

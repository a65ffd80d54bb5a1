"""The Celery app factory every service, beat, flower and the web side use: the top of `common`.

`create_app` is the configured app (`common.celery_base`, with every app's hooks) plus what
sits above sending: contracts' `.delay()` and friends bound to `common.calls` (on import of
this module), and in a queue service the worker service's hooks of `common.process_hooks`
(its final failures kept as dead letters and listed on the operations page).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from celery import Celery

import common.calls  # noqa: F401 - binds contracts' .delay() and friends to sending
from common.celery_base import DJANGO_SETTINGS, configured_app, current_app
from common.process_hooks import Scope, install
from common.transport import limited_tasks
from contracts.declare import TaskContract

__all__ = ["DJANGO_SETTINGS", "create_app", "current_app", "implements"]

DEFAULT_LEASE = 3600.0  # seconds, for a task with no hard time limit


def create_app(service: str, *, include: tuple[str, ...] = ()) -> Celery:
    """A configured app for `service`; Django is set up so tasks can use the ORM."""
    app = configured_app(service, include=include)
    install(app, Scope.WORKER_SERVICE)  # a queue service's only (common.process_hooks)
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
        # A limit's concurrency slot is freed at the latest with the task's hard time limit.
        lease = float(options.get("time_limit") or app.conf.task_time_limit or DEFAULT_LEASE)
        body = limited_tasks.wrap(fn, contract, bind=bool(options.get("bind")), lease=lease)
        return app.task(name=contract.name, shared=False, **options)(body)

    return register

"""Database connections in workers: Django's CONN_MAX_AGE, honoured as in a web request.

Celery's Django fixup closes every connection before and after every task, whatever
CONN_MAX_AGE says, so each task paid a fresh PostgreSQL connection (a fifth of a CRM sync
task's CPU in the benchmark profile). Here the fixup's closing is turned off and each task
is bracketed the way Django brackets a request: `close_old_connections()` drops a connection
that is past CONN_MAX_AGE, broken, or left in a failed transaction, and keeps the rest, and
caches that hold connections (memcached, Redis) are closed after it as at a request's end.
`DB_CONN_MAX_AGE=0` gives back a new connection per task.

The fixup's own per-task receivers are then disconnected in the worker: with reuse made
"never" they only counted tasks and closed caches, a twentieth of a no-op task's CPU.
Its start-up and prefork-child handling stay.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.fixups.django import DjangoFixup
from celery.signals import task_postrun, task_prerun, worker_init
from django.conf import settings
from django.core.cache import close_caches
from django.db import close_old_connections

# Backends whose close() does nothing: no per-task call (asgiref's locals make it costly).
_UNCONNECTED_CACHES = frozenset(
    {"django.core.cache.backends.locmem.LocMemCache", "django.core.cache.backends.dummy.DummyCache"}
)
_caches_to_close: bool | None = None

# The fixup recycles connections every CELERY_DB_REUSE_MAX tasks: make that never.
_NEVER = 2**62


def install_connection_reuse(app: Celery) -> None:
    app.conf.CELERY_DB_REUSE_MAX = _NEVER
    task_prerun.connect(_before_task, weak=False, dispatch_uid="common.db_connections.pre")
    task_postrun.connect(_after_task, weak=False, dispatch_uid="common.db_connections.post")

    def drop_fixup_task_receivers(**_: Any) -> None:  # after the fixup's own worker_init
        for fixup in getattr(app, "_fixups", ()):
            worker = getattr(fixup, "_worker_fixup", None) if isinstance(fixup, DjangoFixup) else None
            if worker is not None:
                task_prerun.disconnect(worker.on_task_prerun)
                task_postrun.disconnect(worker.on_task_postrun)

    worker_init.connect(drop_fixup_task_receivers, weak=False, dispatch_uid="common.db_connections.fixup")


def _before_task(**_: Any) -> None:
    close_old_connections()


def _after_task(**_: Any) -> None:
    global _caches_to_close
    close_old_connections()
    if _caches_to_close is None:
        _caches_to_close = any(c.get("BACKEND") not in _UNCONNECTED_CACHES for c in settings.CACHES.values())
    if _caches_to_close:
        close_caches()

"""Database connections in workers: Django's CONN_MAX_AGE, honoured as in a web request.

Celery's Django fixup closes every connection before and after every task, whatever
CONN_MAX_AGE says, so each task paid a fresh PostgreSQL connection (a fifth of a CRM sync
task's CPU in the benchmark profile). Here the fixup's closing is turned off and each task
is bracketed the way Django brackets a request: `close_old_connections()` drops a connection
that is past CONN_MAX_AGE, broken, or left in a failed transaction, and keeps the rest.
`DB_CONN_MAX_AGE=0` gives back a new connection per task.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

# The fixup recycles connections every CELERY_DB_REUSE_MAX tasks: make that never.
_NEVER = 2**62


def install_connection_reuse(app: Celery) -> None:
    app.conf.CELERY_DB_REUSE_MAX = _NEVER
    task_prerun.connect(_close_old_connections, weak=False, dispatch_uid="common.db_connections.pre")
    task_postrun.connect(_close_old_connections, weak=False, dispatch_uid="common.db_connections.post")


def _close_old_connections(**_: Any) -> None:
    close_old_connections()

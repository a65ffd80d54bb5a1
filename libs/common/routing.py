"""The one routing table, as a rule: the task `<service>.<name>` goes to the queue `<service>`.

A rule, not a list of every task, so routing needs no service's contract and a new task
is routed without touching the shared library.
"""

from __future__ import annotations

from typing import Any

# The worker services, one queue each (a service's queue is its name).
SERVICES = ("emails", "payments", "reports", "sync")


def queue_for(name: str) -> str | None:
    """The queue of the task `name`, or None for a name of no service (Celery's own)."""
    service, dot, rest = name.partition(".")
    return service if dot and rest and service in SERVICES else None


def route(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, str] | None:
    """Celery router (`task_routes`)."""
    queue = queue_for(name)
    return {"queue": queue} if queue else None

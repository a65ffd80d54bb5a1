"""What runs when a task fails for good: one `task_failure` receiver over one ordered list.

Three modules used to connect a receiver each (the failure log and Sentry, the dead letter of
a task that opts in, the operations page's recent failures), so their order was whatever order
the imports happened in. Here there is one receiver and one list: the failure is reported
first, then kept, then listed, and a hook that raises is logged without stopping the next.
Each part adds its hook from its own `install` (this module imports none of them), and the
installs run in the order `common.process_hooks` lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.signals import task_failure

logger = logging.getLogger(__name__)

FailureHook = Callable[..., None]
FAILURE_HOOKS: list[FailureHook] = []  # in the order they run


def add(hook: FailureHook) -> None:
    """Run `hook(sender=..., task_id=..., exception=..., args=..., kwargs=..., ...)` on every
    final task failure of this process, after the hooks added before it (idempotent)."""
    if hook not in FAILURE_HOOKS:
        FAILURE_HOOKS.append(hook)
    task_failure.connect(on_task_failure, weak=False, dispatch_uid="common.task_failure")


def on_task_failure(sender: Any = None, **details: Any) -> None:
    """The one `task_failure` receiver: every hook, in order; none may stop the others."""
    for hook in tuple(FAILURE_HOOKS):
        try:
            hook(sender=sender, **details)
        except Exception:  # noqa: BLE001 - Celery's own dispatch would log and go on, too
            logger.exception(
                "Failure hook %s raised for task %s", getattr(hook, "__qualname__", hook), sender
            )

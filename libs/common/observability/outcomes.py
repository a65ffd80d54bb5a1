"""Business outcomes: a task ending the way its design allows (a declined card), not a bug.

A task lists its outcome exceptions in `throws`, Celery's own option: Celery then logs each
as one INFO line ("raised expected") without a traceback, and Sentry's Celery integration
skips it. The failure reporter, the failure metrics and the recent-failures list ask
`is_outcome` too, so an outcome is logged once and pages nobody. Reject and Ignore are a
task deciding its own fate, counted the same way.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Ignore, Reject


def is_outcome(task: Any, exc: BaseException | None) -> bool:
    """True if `exc` ending `task` is an outcome it declared (`throws`), Reject or Ignore."""
    if exc is None:
        return False
    if isinstance(exc, Reject | Ignore):
        return True
    throws = getattr(task, "throws", None) or ()
    return isinstance(throws, tuple) and bool(throws) and isinstance(exc, throws)

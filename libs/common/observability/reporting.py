"""Error reporting for every process: one structured log per task failure, and Sentry.

Both paths mask personal data and secrets first (common.masking: by key name and
by pattern, on a capped prefix of each value, in bounded time), so neither logs nor Sentry
events carry PII, whatever size of argument or exception text a task failed with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

from celery.signals import after_setup_logger, after_setup_task_logger

from common.masking import mask, mask_handlers, mask_text
from common.observability import failure_hooks
from common.observability.outcomes import is_outcome
from common.observability.sentry import init_sentry

logger = logging.getLogger("common.task_failure")
_installed: set[str] = set()


def _shown_args(args: Any) -> Any:
    """A task's positional arguments as a list; any other shape (a dict, a string, a number:
    a malformed message or `apply(args=...)`) is shown as it came, never iterated."""
    if args is None:
        return []
    if isinstance(args, list | tuple):
        return list(args)
    return args


def _shown_kwargs(kwargs: Any) -> Any:
    if kwargs is None:
        return {}
    if isinstance(kwargs, Mapping):
        return dict(kwargs)
    return kwargs


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails is still reported
        return f"<unprintable {type(value).__name__}>"


def handle_task_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """The failure handler: one masked, structured record per failure.

    Whatever shape the task's arguments have, the failure is reported: a handler that
    raised here would lose the report (Celery logs the handler's error, not the task's).
    A business outcome (`common.observability.outcomes`) is no failure: Celery's own line
    says it once, without a traceback.
    """
    if is_outcome(sender, exception):
        return
    name = getattr(sender, "name", None) or _text(sender)
    task_args = mask(_shown_args(args))
    task_kwargs = mask(_shown_kwargs(kwargs))
    logger.error(
        "Task %s[%s] failed: %s args=%s kwargs=%s",
        name,
        task_id,
        mask_text(f"{type(exception).__name__}: {_text(exception)}"),
        task_args,
        task_kwargs,
        extra={
            "task_name": name,
            "task_id": task_id,
            "task_args": task_args,
            "task_kwargs": task_kwargs,
            "exception": mask_text(_text_repr(exception)),
        },
        exc_info=(type(exception), exception, getattr(einfo, "tb", None)) if exception else None,
    )


def _text_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}>"


def _mask_celery_logging(logger: logging.Logger, **_: Any) -> None:
    mask_handlers(logger)
    mask_handlers(logging.getLogger())


def install_error_reporting(service: str) -> None:
    if service in _installed:
        return
    _installed.add(service)
    failure_hooks.add(handle_task_failure)  # first: the failure is reported before anything else
    for signal in (after_setup_logger, after_setup_task_logger):
        signal.connect(_mask_celery_logging, weak=False, dispatch_uid=f"common.mask.{cast(Any, signal).name}")
    mask_handlers(logging.getLogger())
    init_sentry(service)

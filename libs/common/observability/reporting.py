"""Error reporting for every process: one structured log per task failure, and Sentry.

Both paths mask personal data (emails, names) first, so neither logs nor Sentry events
carry PII.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, task_failure

from common.observability.pii import mask, mask_handlers, mask_text

logger = logging.getLogger("common.task_failure")
_installed: set[str] = set()


def handle_task_failure(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """The chapter's failure handler: one masked, structured record per failure."""
    name = getattr(sender, "name", str(sender))
    logger.error(
        "Task %s[%s] failed: %s args=%s kwargs=%s",
        name,
        task_id,
        mask_text(f"{type(exception).__name__}: {exception}"),
        mask(list(args or ())),
        mask(dict(kwargs or {})),
        extra={
            "task_name": name,
            "task_id": task_id,
            "task_args": mask(list(args or ())),
            "task_kwargs": mask(dict(kwargs or {})),
            "exception": mask_text(repr(exception)),
        },
        exc_info=(type(exception), exception, getattr(einfo, "tb", None)) if exception else None,
    )


def _mask_celery_logging(logger: logging.Logger, **_: Any) -> None:
    mask_handlers(logger)
    mask_handlers(logging.getLogger())


def install_error_reporting(service: str) -> None:
    if service in _installed:
        return
    _installed.add(service)
    task_failure.connect(handle_task_failure, weak=False, dispatch_uid="common.task_failure")
    for signal in (after_setup_logger, after_setup_task_logger):
        signal.connect(_mask_celery_logging, weak=False, dispatch_uid=f"common.mask.{signal.name}")
    mask_handlers(logging.getLogger())
    from common.observability.sentry import init_sentry

    init_sentry(service)

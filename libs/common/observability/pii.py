"""Masking of personal data (emails, names) before it reaches logs or Sentry."""

from __future__ import annotations

import logging
import re
from typing import Any

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# Keys whose values identify a person; masked wherever they appear in structured data.
PII_KEYS = frozenset(
    {
        "email",
        "recipient",
        "recipients",
        "to",
        "name",
        "first_name",
        "last_name",
        "full_name",
        "patient_name",
        "doctor_name",
        "phone",
        "address",
    }
)
MASK = "[redacted]"


def mask_text(text: str) -> str:
    return EMAIL_RE.sub("[email]", text)


def mask(value: Any, _depth: int = 0) -> Any:
    """Recursively mask PII in JSON-like data (dicts by key, strings by pattern)."""
    if _depth > 8:
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: (MASK if str(k).lower() in PII_KEYS else mask(v, _depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask(v, _depth + 1) for v in value)
    return value


class MaskingFormatter(logging.Formatter):
    """Masks emails in the final text, tracebacks included, whatever formatter it wraps."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(self.inner.format(record))


def mask_handlers(logger: logging.Logger) -> None:
    """Make every handler of `logger` mask PII (Celery installs its own in workers)."""
    for handler in logger.handlers:
        if not isinstance(handler.formatter, MaskingFormatter):
            handler.setFormatter(MaskingFormatter(handler.formatter))


class MaskPIIFilter(logging.Filter):
    """Masks emails in every log record's message and structured extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
                record.args = None
            except Exception:  # noqa: BLE001 - a broken format must not drop the record
                pass
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        for key in ("args_", "task_args", "task_kwargs", "exception"):
            if hasattr(record, key):
                setattr(record, key, mask(getattr(record, key)))
        return True


# Celery's "Task <name>[<id>] succeeded in <t>s: <return value>" (celery.app.trace.LOG_SUCCESS)
# prints what a task returned, which may be a patient's name no pattern can find. The value
# is replaced before any handler or formatter sees it, in the text and in the record's
# `data` extra (what a JSON handler would print).
RESULT_HIDDEN = "[result hidden]"
TRACE_LOGGER = "celery.app.trace"


class HideTaskResultsFilter(logging.Filter):
    """On Celery's trace logger: a task's return value never reaches a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and "return_value" in args:
            hidden = {**args, "return_value": _hidden(args["return_value"])}
            record.args = hidden
            if isinstance(getattr(record, "data", None), dict):
                record.data = hidden
        return True


def _hidden(value: Any) -> str:
    return "None" if value in (None, "None") else RESULT_HIDDEN


def hide_task_results() -> None:
    """Install `HideTaskResultsFilter` on Celery's trace logger (once; logging_dict does it too)."""
    trace_logger = logging.getLogger(TRACE_LOGGER)
    if not any(isinstance(f, HideTaskResultsFilter) for f in trace_logger.filters):
        trace_logger.addFilter(HideTaskResultsFilter())

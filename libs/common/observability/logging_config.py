"""Log format shared by every process; PII masking is applied by a filter, not by each caller.

LOG_FORMAT=text (the default): one human-readable line per record. LOG_FORMAT=json: one JSON
object per line (python-json-logger), for a log shipper:

    {"timestamp": "2024-05-01T12:00:00.123+00:00", "level": "INFO", "logger": "sync.tasks",
     "message": "...", "service": "sync", "process": "MainProcess", "pid": 4242,
     "task_name": "sync.create_account", "task_id": "...", "root_id": "...", "parent_id": "...",
     "retries": 0}

The task fields are on every line logged while a task runs (the task's own loggers, Celery's
trace lines, the failure report), and `task_name`/`task_id` on Celery's "received" line.
Extras a caller passes (`extra={...}`) become fields. Masking is the text format's
(common.masking): personal data and secrets by pattern in every string (message
and traceback included, each cut to a bound), values of personal keys (`PII_KEYS`) in
structured extras; done on the fields before they
are encoded, so a mask never breaks the JSON. Celery's `data` extra (its message context,
with the task's arguments) is left out, as the text format leaves it out.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, cast

from pythonjsonlogger.core import RESERVED_ATTRS, merge_record_extra
from pythonjsonlogger.json import JsonFormatter

from common.masking import LINE_CHARS, MaskingFormatter, mask, mask_text
from common.settings import get_settings

# Record attributes never printed as fields: the LogRecord's own, and Celery's context dict.
LEFT_OUT = frozenset({*RESERVED_ATTRS, "data", "color_message"})
_service: str | None = None


def logging_dict(level: str, fmt: str | None = None) -> dict[str, Any]:
    """dictConfig for a process; `fmt` "text" or "json", by default LOG_FORMAT."""
    if fmt is None:
        fmt = get_settings().log_format
    if fmt == "json":
        _follow_celery_logging()  # beat and flower set up Celery's handlers too: JSON as well
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "mask_pii": {"()": "common.masking.MaskPIIFilter"},
            "hide_task_results": {"()": "common.masking.HideTaskResultsFilter"},
        },
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"},
            "json": {"()": "common.observability.logging_config.JsonLogFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if fmt == "json" else "plain",
                "filters": ["mask_pii"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "INFO"},
            # "Task ... succeeded in ...s: <return value>": the value may name a patient.
            "celery.app.trace": {"filters": ["hide_task_results"]},
        },
    }


def set_service(name: str) -> None:
    """The `service` field of this process's JSON lines (a worker: its app's name)."""
    global _service
    _service = name


def service_name() -> str:
    """`set_service`'s name, else the package run with `python -m` (web.manage: web)."""
    if _service:
        return _service
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.split(".", 1)[0]
    return os.path.basename(sys.argv[0] or "python").removesuffix(".py")


def task_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The running task's name and ids, or those Celery's "received" line carries; else {}."""
    state = sys.modules.get("celery._state")
    task: Any = state.get_current_task() if state is not None else None
    request = getattr(task, "request", None)
    if request is not None and getattr(request, "id", None) and not request.called_directly:
        return {
            "task_name": task.name,
            "task_id": request.id,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "retries": request.retries,
        }
    data = getattr(record, "data", None)
    if isinstance(data, dict) and data.get("id") and data.get("name"):
        return {"task_name": str(data["name"]), "task_id": str(data["id"])}
    return {}


class _Fields(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(reserved_attrs=sorted(LEFT_OUT))

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data.update(
            timestamp=datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            level=record.levelname,
            logger=record.name,
            message=record.message,
            service=service_name(),
            process=record.processName,
            pid=record.process,
        )
        log_data.update(task_fields(record))
        extras: dict[str, Any] = {}
        merge_record_extra(record, extras, reserved=self._skip_fields)
        for key, value in {**extras, **message_dict}.items():
            log_data.setdefault(key, value)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # Personal data and secrets in every string, personal keys' values; each field cut as a
        # whole log line is (a traceback), all of them together to twice that.
        return mask(log_data, limit=LINE_CHARS, total=2 * LINE_CHARS)


class JsonLogFormatter(MaskingFormatter):
    """One JSON object per record, masked field by field.

    A MaskingFormatter, so `masking.mask_handlers` (run when Celery sets up its logging) keeps
    it as it is: masking the finished line would cut into JSON escapes (`\\n` before an
    address) and break the line.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(_Fields())

    def format(self, record: logging.LogRecord) -> str:
        return self.inner.format(record)


def use_json_formatter(logger: logging.Logger) -> None:
    """Make every handler of `logger` write JSON lines."""
    for handler in logger.handlers:
        if not isinstance(handler.formatter, JsonLogFormatter):
            handler.setFormatter(JsonLogFormatter())


def _on_celery_logging(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        use_json_formatter(logger)
    use_json_formatter(logging.getLogger())


def _follow_celery_logging() -> None:
    """Each handler Celery installs (a worker's, beat's) writes JSON; warnings are logged."""
    from celery import signals

    logging.captureWarnings(True)  # warnings.warn (Celery's SecurityWarning as root): a JSON line
    for signal in (signals.after_setup_logger, signals.after_setup_task_logger):
        uid = f"common.json_logs.{cast(Any, signal).name}"  # celery-types leaves out Signal.name
        signal.connect(_on_celery_logging, weak=False, dispatch_uid=uid)


def _json_say(msg: str, f: Any = sys.__stderr__) -> None:
    """Celery's `safe_say` (the shutdown notices its signal handlers write) as a JSON line."""
    line = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": "INFO",
        "logger": "celery.apps.worker",
        "message": mask_text(str(msg).strip()),
        "service": service_name(),
        "process": "MainProcess",
        "pid": os.getpid(),
    }
    try:
        os.write(f.fileno(), (json.dumps(line) + "\n").encode())
    except (OSError, ValueError, AttributeError):
        pass


def install_worker_json_logs(service: str) -> None:
    """LOG_FORMAT=json in a Celery worker: the handlers Celery installs write JSON too.

    Celery replaces the root logger's handlers and gives `celery.task` its own when the
    worker starts; each gets the JSON formatter as it is set up. The startup banner is
    plain text (common.worker passes --quiet), warnings are logged instead of printed, and
    the shutdown notices Celery writes straight to stdout from its signal handlers are
    written as JSON lines instead.
    """
    from celery.apps import worker as celery_worker

    set_service(service)
    _follow_celery_logging()
    if hasattr(celery_worker, "safe_say"):
        celery_worker.safe_say = _json_say
    use_json_formatter(logging.getLogger())

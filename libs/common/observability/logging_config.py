"""Log format shared by every process; PII masking is applied by a filter, not by each caller."""

from typing import Any


def logging_dict(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "mask_pii": {"()": "common.observability.pii.MaskPIIFilter"},
            "hide_task_results": {"()": "common.observability.pii.HideTaskResultsFilter"},
        },
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"}
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
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

"""Entry point of Flower. Refuses to start without a password: no open dashboards.

Flower is a monitor here, not a way in: every page and API call needs the password
(`/metrics` and `/healthcheck` too, which Flower 2 serves to anyone), and the API that
sends tasks (`/api/task/apply|async-apply|send-task`) or stops and reshapes workers
(shutdown, pool restart/grow/shrink/autoscale, add/cancel consumer, rate and time limits)
answers 403. Revoking a task stays, as it does on the workers (common.remote_control).
"""

import os
import sys
from typing import Any

import tornado.web

from common.celery_app import create_app
from common.settings import SettingsError, get_settings

app = create_app("monitor")

# Handlers (flower.urls) refused outright: a monitor must not start tasks or stop workers.
REFUSED = (
    "flower.api.tasks.TaskApply",
    "flower.api.tasks.TaskAsyncApply",
    "flower.api.tasks.TaskSend",
    "flower.api.control.WorkerShutDown",
    "flower.api.control.WorkerPoolRestart",
    "flower.api.control.WorkerPoolGrow",
    "flower.api.control.WorkerPoolShrink",
    "flower.api.control.WorkerPoolAutoscale",
    "flower.api.control.WorkerQueueAddConsumer",
    "flower.api.control.WorkerQueueCancelConsumer",
    "flower.api.control.TaskTimout",
    "flower.api.control.TaskRateLimit",
)
# Handlers Flower serves without authentication; here they need the password like the rest.
AUTHENTICATED = ("flower.views.monitor.Metrics", "flower.views.monitor.Healthcheck")


def _name(handler_class: type) -> str:
    return f"{handler_class.__module__}.{handler_class.__qualname__}"


def _refused_handler() -> type:
    from flower.api import BaseApiHandler

    class Refused(BaseApiHandler):
        """403 for every method, after the password check (a stranger gets 401 as elsewhere)."""

        def prepare(self) -> None:
            if not self.current_user:  # raises 401 on a missing or wrong password
                raise tornado.web.HTTPError(401)
            raise tornado.web.HTTPError(
                403, reason="Forbidden", log_message="disabled on this Flower: it is a monitor only"
            )

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            if status_code == 401:
                self.set_header("WWW-Authenticate", 'Basic realm="flower"')
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            forbidden = status_code == 403
            self.finish("Forbidden: this Flower is a monitor only\n" if forbidden else "Access denied\n")

    return Refused


def _authenticated(handler_class: type) -> type:
    class Authenticated(handler_class):
        def prepare(self) -> Any:
            if not self.current_user:  # raises 401 on a missing or wrong password
                raise tornado.web.HTTPError(401)
            return super().prepare()

    Authenticated.__name__ = Authenticated.__qualname__ = f"Authenticated{handler_class.__name__}"
    return Authenticated


def secure_handlers() -> list[str]:
    """Rewrite Flower's URL table (`flower.urls.handlers`, in place, before the app is built).

    Returns the paths changed. Raises RuntimeError if a handler to change is missing: a
    Flower upgrade that renamed one must not quietly reopen it.
    """
    import flower.urls
    from tornado.routing import URLSpec

    refused, changed = _refused_handler(), []
    found: set[str] = set()
    for i, entry in enumerate(flower.urls.handlers):
        if isinstance(entry, URLSpec):
            pattern, handler_class = entry.regex.pattern, entry.target
        else:
            pattern, handler_class = entry[0], entry[1]
        name = _name(handler_class) if isinstance(handler_class, type) else ""
        if name in REFUSED:
            replacement = refused
        elif name in AUTHENTICATED:
            replacement = _authenticated(handler_class)
        else:
            continue
        found.add(name)
        if isinstance(entry, URLSpec):
            flower.urls.handlers[i] = URLSpec(pattern, replacement, entry.kwargs, entry.name)
        else:
            flower.urls.handlers[i] = (pattern, replacement, *entry[2:])
        changed.append(pattern)
    missing = set(REFUSED + AUTHENTICATED) - found
    if missing:
        raise RuntimeError(f"Flower's URL table has none of {sorted(missing)}: check the Flower version")
    return changed


def export_queues() -> None:
    """Add every service queue's figures to Flower's /metrics (prometheus_client's registry).

    A worker reports only its own queue; a queue whose workers are all gone would vanish
    from Prometheus with them. Here it stays, with `celery_queue_consumers` 0.
    """
    from prometheus_client import REGISTRY

    from common.observability.metrics import broker_collector
    from common.routing import SERVICES

    REGISTRY.register(broker_collector(SERVICES))


def main() -> None:
    s = get_settings()
    if s.flower_password is None or not s.flower_password.get_secret_value():
        raise SystemExit(
            str(
                SettingsError(
                    "Invalid configuration (environment variables):\n  FLOWER_PASSWORD: must be set"
                )
            )
        )
    secure_handlers()
    export_queues()
    # Through the environment, not argv, so the password never shows in `ps`.
    os.environ["FLOWER_BASIC_AUTH"] = f"{s.flower_user}:{s.flower_password.get_secret_value()}"
    app.start(["flower", f"--port={s.flower_port}", f"--address={s.flower_address}", *sys.argv[1:]])


if __name__ == "__main__":
    main()

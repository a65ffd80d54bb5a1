"""Every hook a process installs, in one ordered list (Dramatiq's one middleware list).

Hooks used to be installed from three places (the configured app, `create_app`, `run_worker`),
each calling its installs one by one, so their order was the order of those calls and of
the imports behind them. Here each hook is declared once, in the order it is installed, with
the processes it applies to:

- **every app** (`configured_app`: the web side, beat, Flower, a producer-only app made by
  `current_app()`, and each worker service):
  1. `db_connection_reuse`: Django's CONN_MAX_AGE honoured per task (`common.db_connections`);
  2. `error_reporting`: Sentry, Celery's log handlers masked, and the failure report as the
     first failure hook (`common.observability.reporting`);
  3. `canvas_outbox`: a chain, group or chord is sent through the outbox (`common.canvas`);
- **worker service** (`create_app` of a queue service, `common.routing.SERVICES`):
  4. `dead_letters`: a task that opts in keeps its final failure (`common.deadletters.failures`);
  5. `recent_failures`: the operations page lists it (`common.observability.recent_failures`);
  6. `revoked_state`: a task stopped by a revoke ends REVOKED, not SUCCESS (`common.cancellation`);
- **worker run** (`run_worker`, in the worker's main process before its pool starts):
  7. `scheduled_inspect`: `inspect scheduled` reads the delayed set (`transport.broker.scheduled`);
  8. `remote_control`: commands outside WORKER_REMOTE_CONTROL_ALLOW refused (`common.remote_control`);
  9. `hidden_task_results`: "Task ... succeeded" never shows the value (`common.masking`);
  10. `json_logs`: with LOG_FORMAT=json, Celery's handlers write JSON (`observability.logging_config`);
  11. `metrics`: with METRICS_PORT, count tasks and serve /metrics (`observability.metrics`);
  12. `release_info`: `inspect stats` shows the release (`common.worker_status`);
  13. `exit_status`: keep the worker, for a truthful exit code (`common.worker_status`).

Why this order: each group runs when its process reaches that point (an app is made, a
service's app is made, its worker runs), so a group's hooks come after the groups before it.
The failure report is added before the dead letter and the recent failure, so the one
`task_failure` receiver (`observability.failure_hooks`) reports, then keeps, then lists.
`scheduled_inspect` comes before `remote_control`, which keeps a command by name, and
`json_logs` before `metrics`, which logs where it serves. Every install is idempotent:
running the list again connects no receiver twice and starts nothing twice.

The every-app hooks run in `common.celery_base`, which lower layers (publishing, the outbox,
sending) take their app from and which may not import this module: this module hands them
down with `celery_base.set_app_hooks` when it is imported, and Django's app registry imports
it (`common.apps`) during the `django.setup()` that `configured_app` runs first.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from common import cancellation, canvas, celery_base, db_connections, masking, remote_control, worker_status
from common.deadletters import failures
from common.observability import logging_config, metrics, recent_failures, reporting
from common.routing import SERVICES
from common.settings import get_settings
from common.transport.broker import scheduled


class Scope(enum.IntEnum):
    """Which processes a hook applies to; each scope's processes have the scopes before it too."""

    EVERY_APP = 1  # configured_app: every process that makes a Celery app
    WORKER_SERVICE = 2  # create_app of a queue service (common.routing.SERVICES)
    WORKER_RUN = 3  # run_worker: the worker's main process, before the pool starts


# The kinds of process, by the scopes they install (the docstring's three groups).
PROCESSES: dict[str, tuple[Scope, ...]] = {
    "producer": (Scope.EVERY_APP,),  # web, beat, Flower, current_app() outside a service
    "service": (Scope.EVERY_APP, Scope.WORKER_SERVICE),  # a queue service's app, not running
    "worker": (Scope.EVERY_APP, Scope.WORKER_SERVICE, Scope.WORKER_RUN),
}


@dataclass(frozen=True)
class Hook:
    name: str
    scope: Scope
    install: Callable[[Celery], None]  # idempotent


def _connection_reuse(app: Celery) -> None:
    db_connections.install_connection_reuse(app)


def _error_reporting(app: Celery) -> None:
    reporting.install_error_reporting(app.main)


def _dead_letters(app: Celery) -> None:
    failures.install()


def _recent_failures(app: Celery) -> None:
    recent_failures.install()


def _revoked_state(app: Celery) -> None:
    cancellation.install()


def _scheduled_inspect(app: Celery) -> None:
    scheduled.register()


def _remote_control(app: Celery) -> None:
    remote_control.install_remote_control_policy()


def _hidden_task_results(app: Celery) -> None:
    masking.hide_task_results()


def _json_logs(app: Celery) -> None:
    if get_settings().log_format == "json":
        logging_config.install_worker_json_logs(app.main)


def _metrics(app: Celery) -> None:
    settings = get_settings()
    if settings.metrics_port is not None:
        metrics.serve_metrics(app, settings, pool=str(app.conf.worker_pool))


HOOKS: tuple[Hook, ...] = (
    Hook("db_connection_reuse", Scope.EVERY_APP, _connection_reuse),
    Hook("error_reporting", Scope.EVERY_APP, _error_reporting),
    Hook("canvas_outbox", Scope.EVERY_APP, canvas.install),
    Hook("dead_letters", Scope.WORKER_SERVICE, _dead_letters),
    Hook("recent_failures", Scope.WORKER_SERVICE, _recent_failures),
    Hook("revoked_state", Scope.WORKER_SERVICE, _revoked_state),
    Hook("scheduled_inspect", Scope.WORKER_RUN, _scheduled_inspect),
    Hook("remote_control", Scope.WORKER_RUN, _remote_control),
    Hook("hidden_task_results", Scope.WORKER_RUN, _hidden_task_results),
    Hook("json_logs", Scope.WORKER_RUN, _json_logs),
    Hook("metrics", Scope.WORKER_RUN, _metrics),
    Hook("release_info", Scope.WORKER_RUN, worker_status.add_release_info),
    Hook("exit_status", Scope.WORKER_RUN, worker_status.track_exit_status),
)


def hooks_for(process: str) -> list[Hook]:
    """The hooks a kind of process ("producer", "service", "worker") installs, in order."""
    return [hook for hook in HOOKS if hook.scope in PROCESSES[process]]


def install(app: Celery, scope: Scope) -> None:
    """Install `scope`'s hooks on `app`, in order; a worker service's only on a queue service's app."""
    if scope is Scope.WORKER_SERVICE and app.main not in SERVICES:
        return
    for hook in HOOKS:
        if hook.scope is scope:
            hook.install(app)


celery_base.set_app_hooks([hook.install for hook in HOOKS if hook.scope is Scope.EVERY_APP])

"""Starting a service's worker: its own queue, its default pool, overridable by config."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from celery import Celery, bootsteps, signals
from celery.platforms import EX_FAILURE
from celery.worker import WorkController
from celery.worker.control import Panel

from common.masking import hide_task_results
from common.observability.logging_config import install_worker_json_logs
from common.observability.metrics import serve_metrics
from common.settings import get_settings, service_settings_or_exit
from common.transport.broker import scheduled


def worker_argv(app: Celery, *, pool: str, concurrency: int, extra: Sequence[str] = ()) -> list[str]:
    s = get_settings()
    return [
        # JSON logs: no plain-text startup banner among the lines (a `celery` option, before `worker`).
        *(["--quiet"] if s.log_format == "json" else []),
        "worker",
        f"--queues={app.main}",
        f"--hostname={app.main}@%h",
        f"--pool={s.worker_pool or pool}",
        f"--concurrency={s.worker_concurrency or concurrency}",
        f"--loglevel={s.log_level}",
        # Later flags win, so an operator's command line overrides the defaults above.
        *extra,
    ]


class ReleaseInfo(bootsteps.StartStopStep):
    """Adds `release` (`Settings.release_for`, e.g. `reports@1.0.1`) to `celery inspect stats`.

    `stats` merges into its top level the `info()` of the worker's started steps (a plain
    `Step` is never listed there, hence StartStopStep with nothing to start), so operators
    see which build each worker runs: the same string Sentry tags its events with.
    """

    def info(self, worker: WorkController) -> dict[str, str]:  # type: ignore[override]
        return {"release": get_settings().release_for(worker.app.main)}


class ExitStatus:
    """The exit code `celery worker` means to end with, which `worker_main` throws away.

    `Celery.worker_main` runs the click command with `standalone_mode=False`; click 8 then
    returns the code instead of exiting, and Celery drops it (celery/app/base.py `start`),
    so a worker that died of an "Unrecoverable error" (a broker that stayed away past
    `broker_connection_max_retries`, or a crash in kombu's reconnect) exited 0 and a
    supervisor restarting on failure left it dead. The `WorkController` keeps the code:
    `exitcode` is 0 after a warm shutdown (SIGTERM, remote `shutdown`), 1 after an
    unrecoverable error, and None after a cold stop (`WorkerTerminate`: SIGQUIT, whose
    handler declares EX_FAILURE, or "Too many open files" after a lost connection), which
    is a failure too.
    """

    def __init__(self) -> None:
        self.worker: WorkController | None = None
        signals.worker_init.connect(self._on_init, weak=False)

    def _on_init(self, sender: Any = None, **_: Any) -> None:
        if isinstance(sender, WorkController):
            self.worker = sender

    def code(self) -> int:
        """0 if no worker ran (--help) or it was stopped warm; otherwise non-zero."""
        if self.worker is None:
            return 0
        code = self.worker.exitcode
        if code is None:
            return EX_FAILURE
        return code if isinstance(code, int) else EX_FAILURE

    def close(self) -> None:
        signals.worker_init.disconnect(self._on_init)


logger = logging.getLogger(__name__)

# Remote control commands a worker obeys by default: whoever can write to Redis can send
# any of them (the broker is the trust boundary), so only reading and event switching
# (Flower). `revoke` (it cancels any task by id), `hello` (mingle's start-up sync: it merges
# the sender's revoked ids, a forged revoke by another name) and everything else - shutdown,
# pool_restart/grow/shrink, autoscale, add/cancel_consumer, rate_limit, time_limit,
# terminate, election, objgraph, and any command added later - is refused unless
# WORKER_REMOTE_CONTROL_ALLOW names it (`revoke` for Flower's revoke button; mingle then
# logs each peer's refusal and syncs nothing).
DEFAULT_REMOTE_CONTROL = frozenset(
    {
        # inspect: read only
        "ping", "stats", "active_queues", "registered", "scheduled", "active", "reserved",
        "revoked", "query_task", "conf", "clock", "report", "memsample", "memdump",
        # control: events for Flower
        "enable_events", "disable_events", "heartbeat",
    }
)  # fmt: skip
# `revoke(..., terminate=True)` kills the running task's process: allowed only with `terminate`.
TERMINATING = frozenset({"revoke", "revoke_by_stamped_headers"})


def allowed_remote_control(setting: str | None) -> frozenset[str] | None:
    """The commands to obey: the default plus WORKER_REMOTE_CONTROL_ALLOW's; None for `*` (all)."""
    extra = {name.strip() for name in (setting or "").split(",") if name.strip()}
    if "*" in extra:
        return None
    return DEFAULT_REMOTE_CONTROL | extra


def _canonical_names() -> dict[str, str]:
    """Every registered command name and alias -> the name it was registered under."""
    by_function = {id(Panel.data[name]): name for name in Panel.meta if name in Panel.data}
    return {key: by_function.get(id(fun), key) for key, fun in Panel.data.items()}


def _refused(name: str, why: str) -> Callable[..., dict[str, str]]:
    def refuse(state: Any, **arguments: Any) -> dict[str, str]:
        logger.warning("Refused remote control command %r from the broker: %s", name, why)
        return {"error": f"remote control command {name!r} refused by this worker: {why}"}

    return refuse


def _no_terminate(name: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    def revoke(state: Any, *args: Any, terminate: bool = False, **arguments: Any) -> Any:
        if terminate:
            why = "terminate is not in WORKER_REMOTE_CONTROL_ALLOW"
            return _refused(f"{name} terminate=True", why)(state)
        return handler(state, *args, **arguments)

    return revoke


def restrict_remote_control(allowed: Iterable[str] | None) -> list[str]:
    """Make this process's workers refuse every remote control command not in `allowed`.

    Celery's registry (`celery.worker.control.Panel.data`, the handlers every worker's
    pidbox dispatches to) is replaced in place before the worker starts: a refused command
    answers `{"error": ...}` and logs a WARNING, and the worker carries on. Returns the
    names refused. `allowed=None` changes nothing (Celery's default: obey everything).
    """
    if allowed is None:
        return []
    allowed = frozenset(allowed)
    refused = []
    for key, name in _canonical_names().items():
        handler = Panel.data[key]
        if name not in allowed:
            Panel.data[key] = _refused(key, "not in WORKER_REMOTE_CONTROL_ALLOW")
            refused.append(key)
        elif name in TERMINATING and "terminate" not in allowed:
            Panel.data[key] = _no_terminate(key, handler)
    return sorted(refused)


def _observe(app: Celery, pool: str) -> None:
    """LOG_FORMAT=json and METRICS_PORT (common.observability): set up before the pool forks."""
    settings = get_settings()
    if settings.log_format == "json":
        install_worker_json_logs(app.main)
    if settings.metrics_port is not None:
        serve_metrics(app, settings, pool=pool)


def run_worker(
    app: Celery,
    *,
    pool: str,
    concurrency: int,
    argv: Sequence[str] | None = None,
    settings: Sequence[Callable[[], object]] = (),
) -> None:
    """Run the worker in this process; exit non-zero (SystemExit) if it stopped on an error.

    `settings`: the service's own settings loaders (`services/<svc>/config.py`), run first: a
    wrong or, in production, unsafe value stops the worker in one line per variable (exit 1)
    before it touches the broker.
    """
    service_settings_or_exit(*settings)
    extra = sys.argv[1:] if argv is None else argv
    scheduled.register()  # `inspect scheduled` from the delayed set (Celery's lists its timer)
    restrict_remote_control(allowed_remote_control(get_settings().worker_remote_control_allow))
    hide_task_results()  # "Task ... succeeded": never the return value (a name, an email)
    _observe(app, get_settings().worker_pool or pool)
    status = ExitStatus()
    app.steps["worker"].add(ReleaseInfo)
    try:
        app.worker_main(worker_argv(app, pool=pool, concurrency=concurrency, extra=extra))
    finally:
        status.close()
    code = status.code()
    if code:
        raise SystemExit(code)

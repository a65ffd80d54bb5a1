"""Starting a service's worker: its own queue, its default pool, overridable by config."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from celery import Celery, bootsteps, signals
from celery.platforms import EX_FAILURE
from celery.worker import WorkController

from common.settings import get_settings


def worker_argv(app: Celery, *, pool: str, concurrency: int, extra: Sequence[str] = ()) -> list[str]:
    s = get_settings()
    return [
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

    def info(self, worker: WorkController) -> dict[str, str]:
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


def run_worker(app: Celery, *, pool: str, concurrency: int, argv: Sequence[str] | None = None) -> None:
    """Run the worker in this process; exit non-zero (SystemExit) if it stopped on an error."""
    extra = sys.argv[1:] if argv is None else argv
    status = ExitStatus()
    app.steps["worker"].add(ReleaseInfo)
    try:
        app.worker_main(worker_argv(app, pool=pool, concurrency=concurrency, extra=extra))
    finally:
        status.close()
    code = status.code()
    if code:
        raise SystemExit(code)

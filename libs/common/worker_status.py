"""What a running worker tells about itself: its release in `inspect stats`, its exit code.

Both are hooks a worker run installs (`common.process_hooks`); `common.worker.run_worker`
reads `exit_code()` when the worker has stopped.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps, signals
from celery.platforms import EX_FAILURE
from celery.worker import WorkController

from common.settings import get_settings


class ReleaseInfo(bootsteps.StartStopStep):
    """Adds `release` (`Settings.release_for`, e.g. `reports@1.0.1`) to `celery inspect stats`.

    `stats` merges into its top level the `info()` of the worker's started steps (a plain
    `Step` is never listed there, hence StartStopStep with nothing to start), so operators
    see which build each worker runs: the same string Sentry tags its events with.
    """

    def info(self, worker: WorkController) -> dict[str, str]:  # type: ignore[override]
        return {"release": get_settings().release_for(worker.app.main)}


def add_release_info(app: Celery) -> None:
    """Give `app`'s workers the ReleaseInfo step (a set: adding it twice adds it once)."""
    app.steps["worker"].add(ReleaseInfo)


# The worker this process runs, once it has started: `exit_code()` reads it.
_started: list[WorkController] = []


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    if isinstance(sender, WorkController):
        _started[:] = [sender]


def track_exit_status(app: Celery) -> None:
    """Keep the worker this run starts, for `exit_code()` (one receiver, however often called).

    A run forgets the previous run's worker (tests run several in one process), so a run that
    starts none (`--help`) exits 0.
    """
    _started.clear()
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="common.worker_status.exit")


def exit_code() -> int:
    """The code `celery worker` meant to exit with, which `worker_main` throws away.

    `Celery.worker_main` runs the click command with `standalone_mode=False`; click 8 then
    returns the code instead of exiting, and Celery drops it (celery/app/base.py `start`),
    so a worker that died of an "Unrecoverable error" (a broker that stayed away past
    `broker_connection_max_retries`, or a crash in kombu's reconnect) exited 0 and a
    supervisor restarting on failure left it dead. The `WorkController` keeps the code:
    `exitcode` is 0 after a warm shutdown (SIGTERM, remote `shutdown`), 1 after an
    unrecoverable error, and None after a cold stop (`WorkerTerminate`: SIGQUIT, whose
    handler declares EX_FAILURE, or "Too many open files" after a lost connection), which
    is a failure too. 0 if no worker ran (--help).
    """
    if not _started:
        return 0
    code = _started[0].exitcode
    if code is None:
        return EX_FAILURE
    return code if isinstance(code, int) else EX_FAILURE

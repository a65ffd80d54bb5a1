"""Starting a service's worker: its own queue, its default pool, overridable by config."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from celery import Celery

from common.process_hooks import Scope, install
from common.settings import get_settings, service_settings_or_exit
from common.worker_status import exit_code


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
    before it touches the broker. The worker run's hooks (`common.process_hooks`: remote
    control policy, JSON logs, metrics, release and exit status...) are installed next, in the
    main process before the pool forks.
    """
    service_settings_or_exit(*settings)
    extra = sys.argv[1:] if argv is None else argv
    app.conf.worker_pool = get_settings().worker_pool or pool  # what the metrics hook reports
    install(app, Scope.WORKER_RUN)
    app.worker_main(worker_argv(app, pool=pool, concurrency=concurrency, extra=extra))
    code = exit_code()
    if code:
        raise SystemExit(code)

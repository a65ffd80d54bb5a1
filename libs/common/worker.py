"""Starting a service's worker: its own queue, its default pool, overridable by config."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from celery import Celery

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


def run_worker(app: Celery, *, pool: str, concurrency: int, argv: Sequence[str] | None = None) -> None:
    extra = sys.argv[1:] if argv is None else argv
    app.worker_main(worker_argv(app, pool=pool, concurrency=concurrency, extra=extra))

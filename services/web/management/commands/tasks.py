"""`manage.py tasks revoke|revoked`: cancel tasks for good, and list what was cancelled.

A revoke is kept in Redis (`common.cancellation`), so it holds for a task waiting in its
queue or in the delayed set, one already fetched by a worker, and while every worker is down.
A running task stops at its next checkpoint if it has any (reports do); `--terminate` also asks
the worker to kill it, which workers refuse unless WORKER_REMOTE_CONTROL_ALLOW names `revoke`
and `terminate`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from celery.result import AsyncResult
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common import cancellation
from common.celery_app import current_app
from common.masking import redact_url


class Command(BaseCommand):
    help = "Revoke tasks by id (kept in Redis: it sticks), or list the revoked ones."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="revoke|revoked")
        revoke = sub.add_parser("revoke", help="cancel tasks: queued, delayed, prefetched or running")
        revoke.add_argument("ids", nargs="+", metavar="TASK_ID")
        revoke.add_argument(
            "--terminate",
            action="store_true",
            help="also kill a running task's process (prefork; needs `revoke,terminate` in the "
            "workers' WORKER_REMOTE_CONTROL_ALLOW); it cannot clean up",
        )
        revoke.add_argument("--signal", default="SIGTERM", help="with --terminate (default SIGTERM)")
        listed = sub.add_parser("revoked", help="the latest revokes still kept, newest first")
        listed.add_argument("--limit", type=int, default=50)

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            getattr(self, f"do_{action}")(**options)
        except redis.RedisError as exc:
            from common.settings import get_settings

            raise CommandError(
                f"Could not reach Redis at {redact_url(get_settings().redis_url)} ({type(exc).__name__}); "
                "nothing was revoked. Is Redis running and REDIS_URL right?"
            ) from exc

    def do_revoke(self, *, ids: list[str], terminate: bool, signal: str, **_: Any) -> None:
        try:
            done = cancellation.revoke(ids, terminate=terminate, signal=signal)
        except ValueError as exc:
            raise CommandError(f"{exc}; nothing was revoked") from exc
        for task_id in done.task_ids:
            self.stdout.write(f"revoked {task_id}")
        if terminate:
            for node, why in sorted(done.refused.items()):
                self.stderr.write(f"{node} refused the hard stop: {why}")
            answered = sum(len(reply) for reply in done.replies)
            self.stdout.write(
                f"hard stop sent ({signal}); {answered} worker(s) answered, {len(done.refused)} refused. "
                "A task that was not terminated stops at its next checkpoint, or runs to its end."
            )

    def do_revoked(self, *, limit: int, **_: Any) -> None:
        app = current_app()
        rows = [("TASK ID", "REVOKED AT (UTC)", "STATE", "HARD STOP")]
        for item in cancellation.recent(limit):
            at = datetime.fromtimestamp(item.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            state = AsyncResult(item.task_id, app=app).state
            rows.append((item.task_id, at, state, "yes" if item.terminate else ""))
        if len(rows) == 1:
            self.stdout.write("No revoked tasks kept.")
            return
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())

"""`manage.py queues status|pause NAME|resume NAME`: stop a queue's tasks from starting, on every
worker, and start them again.

The pause is kept in Redis (`common.transport.broker.pause`), so it holds across worker
restarts until someone resumes it; running tasks finish, waiting ones stay queued. An unknown
queue name is refused (exit 1). Pausing a paused queue, or resuming one that is not, says so
and exits 0: a script may repeat itself.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.masking import mask_text, redact_url
from common.routing import SERVICES
from common.transport.broker.pause import Pause, UnknownQueueError, pause_queue, paused_queues, resume_queue
from web.operations import age_text


def broker_client() -> Any:
    """A Redis client on the broker (REDIS_URL), commands bounded like the workers'."""
    from common.settings import get_settings
    from common.transport import tls

    s = get_settings()
    return tls.redis_from_url(
        s.redis_url, socket_timeout=s.broker_socket_timeout, socket_connect_timeout=s.broker_socket_timeout
    )


def describe(pause: Pause) -> str:
    """`since 2024-05-01 10:00:00 UTC (for 3 min 5 s) by alice: gateway incident`."""
    when = datetime.fromtimestamp(pause.since, UTC).strftime("%Y-%m-%d %H:%M:%S") if pause.since else "?"
    why = f": {mask_text(pause.reason)}" if pause.reason else ""
    return f"since {when} UTC (for {age_text(pause.seconds())}) by {pause.by}{why}"


def operator() -> str:
    try:
        return f"{getpass.getuser()} (manage.py)"
    except (KeyError, OSError):  # no user name for this uid (a container)
        return "manage.py"


class Command(BaseCommand):
    help = "Pause or resume a queue on every worker (kept in Redis), or show which queues are paused."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="status|pause|resume")
        sub.add_parser("status", help="every queue, paused or running")
        pause = sub.add_parser("pause", help="no worker starts this queue's tasks until it is resumed")
        pause.add_argument("queue", metavar="NAME", help=f"one of {', '.join(SERVICES)}")
        pause.add_argument("--reason", default="", help="why, shown with the pause (no personal data)")
        pause.add_argument("--by", default="", help="who pauses it (default: your user name)")
        resume = sub.add_parser("resume", help="start this queue's tasks again, on every worker")
        resume.add_argument("queue", metavar="NAME")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        client = broker_client()
        try:
            getattr(self, f"do_{action}")(client, **options)
        except UnknownQueueError as exc:
            raise CommandError(str(exc)[:1].upper() + str(exc)[1:] + ".") from None
        except redis.RedisError as exc:
            from common.settings import get_settings

            raise CommandError(
                f"Could not reach Redis at {redact_url(get_settings().redis_url)} "
                f"({type(exc).__name__}). Is Redis running and REDIS_URL right?"
            ) from exc
        finally:
            client.close()

    def do_status(self, client: Any, **options: Any) -> None:
        paused = paused_queues(client)
        width = max(len(q) for q in [*SERVICES, *paused])
        for queue in [*SERVICES, *sorted(set(paused) - set(SERVICES))]:
            pause = paused.get(queue)
            state = f"paused {describe(pause)}" if pause else "running"
            self.stdout.write(f"{queue.ljust(width)}  {state}")

    def do_pause(self, client: Any, *, queue: str, reason: str, by: str, **options: Any) -> None:
        pause, made = pause_queue(client, queue, by=by or operator(), reason=reason)
        if made:
            self.stdout.write(
                f"Paused {queue}: no worker starts its tasks from now on; running ones finish and "
                f"waiting ones stay queued. `queues resume {queue}` starts them again."
            )
        else:
            self.stdout.write(f"{queue} was already paused, {describe(pause)}.")

    def do_resume(self, client: Any, *, queue: str, **options: Any) -> None:
        ended = resume_queue(client, queue)
        if ended is None:
            self.stdout.write(f"{queue} was not paused.")
        else:
            self.stdout.write(f"Resumed {queue} (it was paused {describe(ended)}).")

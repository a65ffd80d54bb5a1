"""The admin's operations page: every queue at a glance, its workers, and what failed lately.

One page an operator keeps open (it reloads itself every few seconds): per queue its depth,
the age of its oldest waiting message, its live consumers and which workers (with their
release) consume it, its dead letters, whether it is paused (since when, by whom; with Pause
and Resume buttons for `web.pause_queue`: web/queue_pause_admin.py); the countdown/eta
messages not yet due; the shared rate limits in use and how much of each is used now
(`common.transport.rate_limits`); the unique keys held (`common.transport.unique_jobs`: task,
key hash, holding task id, lease left); the last tasks that failed for good; the last tasks
revoked, with their state. Queue numbers come from Redis (`common.observability.queues`),
workers from one pair of Celery broadcasts (`active_queues`, `stats`) asked at once with a
one-second timeout, failures from `common.observability.recent_failures`, revokes from
`common.transport.revocation`.

Staff only (`admin.site.admin_view`); an unreachable Redis is a page saying so, not a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import redis
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_GET

from common.masking import mask_text, redact_url
from common.observability.queues import BrokerSnapshot, QueueSnapshot, read_broker
from common.observability.recent_failures import KEEP, Failure, recent
from common.routing import SERVICES
from common.transport import revocation
from common.transport.rate_limits import snapshot as rate_limits
from common.transport.unique_jobs import held_keys

logger = logging.getLogger(__name__)

INSPECT_TIMEOUT = 1.0  # seconds the broadcasts wait for workers' replies (the page's own latency)
REFRESH_SECONDS = 5
FAILURES_ON_PAGE = 10
REVOKED_ON_PAGE = 10
UNIQUE_ON_PAGE = 50  # held unique keys listed (a SCAN of at most this many)

# The admin index's "Operations" module links this page and the dead letters.
admin.site.index_template = "web/operations/admin_index.html"


@dataclass(frozen=True)
class WorkerInfo:
    """A worker node as its reply to the broadcasts describes it."""

    hostname: str
    release: str


@dataclass
class Workers:
    """Who consumes which queue; `error` when the broadcast itself could not be sent."""

    by_queue: dict[str, list[WorkerInfo]] = field(default_factory=dict)
    replied: int = 0
    error: str | None = None


def _redis() -> Any:
    from common.settings import get_settings
    from common.transport.tls import redis_from_url

    s = get_settings()
    return redis_from_url(
        s.redis_url, socket_timeout=s.broker_socket_timeout, socket_connect_timeout=s.broker_socket_timeout
    )


def workers_by_queue(active_queues: Mapping[str, Any], stats: Mapping[str, Any]) -> Workers:
    """Join the two broadcasts' replies: queue -> the workers consuming it, with their release."""
    found = Workers(replied=len(set(active_queues) | set(stats)))
    for hostname in sorted(active_queues):
        reply = stats.get(hostname)
        release = str(reply.get("release") or "?") if isinstance(reply, Mapping) else "no stats reply"
        for queue in active_queues[hostname] or []:
            name = queue.get("name") if isinstance(queue, Mapping) else None
            if name:
                found.by_queue.setdefault(str(name), []).append(WorkerInfo(hostname, release))
    return found


def ask_workers(timeout: float = INSPECT_TIMEOUT) -> Workers:
    """`active_queues` and `stats` broadcast at the same time, so the page waits `timeout` once."""
    from common.celery_app import current_app

    app = current_app()

    def ask(method: str) -> dict[str, Any]:
        with app.connection_for_write() as connection:
            inspect = app.control.inspect(timeout=timeout, connection=connection)
            return getattr(inspect, method)() or {}

    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="operations-inspect") as pool:
            queues, stats = pool.submit(ask, "active_queues"), pool.submit(ask, "stats")
            return workers_by_queue(queues.result(), stats.result())
    except Exception as exc:  # noqa: BLE001 - the queue numbers are still worth showing
        logger.warning("Could not ask the workers: %s", type(exc).__name__)
        return Workers(error=f"Could not ask the workers ({type(exc).__name__}).")


def age_text(seconds: float | None) -> str:
    """A waiting message's age as a person reads it: 4.2 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _failure_row(failure: Failure) -> dict[str, Any]:
    return {**failure.__dict__, "when": _when(failure.time)}


def _paused(q: QueueSnapshot, now: float) -> dict[str, Any] | None:
    if q.paused is None:
        return None
    p = q.paused
    return {"since": _when(p.since) if p.since else "?", "for": age_text(q.paused_seconds(now)), "by": p.by,
            "reason": mask_text(p.reason)}  # fmt: skip


def _queue_rows(broker: BrokerSnapshot, workers: Workers) -> list[dict[str, Any]]:
    deadletters = reverse("web-deadletters")
    return [
        {
            "queue": q.queue,
            "length": q.length,
            "oldest_age": q.oldest_age,
            "age": age_text(q.oldest_age),
            "consumers": q.consumers,
            "workers": workers.by_queue.get(q.queue, []),
            "dead_letters": q.dead_letters,
            "dead_letters_url": f"{deadletters}?{urlencode({'queue': q.queue})}",
            "paused": _paused(q, broker.now),
        }
        for q in broker.queues
    ]


def _revoked_rows(revoked: list[revocation.Revoked]) -> list[dict[str, Any]]:
    """Each revoke with its task's state now: REVOKED once a worker dropped or stopped it,
    PENDING while it still waits (or was never sent), SUCCESS if it ran before the revoke."""
    from common.celery_app import current_app

    backend = current_app().backend
    return [
        {
            "task_id": r.task_id,
            "when": _when(r.at),
            "terminate": r.terminate,
            "state": backend.get_state(r.task_id),
        }
        for r in revoked
    ]


def _unreachable(request: HttpRequest, title: str, template: str, exc: Exception) -> HttpResponse:
    from common.settings import get_settings

    where = redact_url(get_settings().redis_url)
    error = f"Could not reach Redis at {where} ({type(exc).__name__}). Is Redis running?"
    context = {**admin.site.each_context(request), "title": title, "error": error, "refresh": REFRESH_SECONDS}
    return render(request, template, context, status=503)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """Queues, their workers and dead letters, the delayed messages, the latest failures."""
    client = _redis()
    try:
        broker = read_broker(client, SERVICES)
        failures = recent(client, FAILURES_ON_PAGE)
        limits = rate_limits(client)
        revoked = _revoked_rows(revocation.recent(client, REVOKED_ON_PAGE))
        unique = held_keys(client, UNIQUE_ON_PAGE)
    except redis.RedisError as exc:
        return _unreachable(request, "Operations", "web/operations/index.html", exc)
    finally:
        client.close()
    workers = ask_workers()
    rows = _queue_rows(broker, workers)
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "refresh": REFRESH_SECONDS,
        "now": _when(datetime.now(UTC).timestamp()),
        "rows": rows,
        "paused": [row for row in rows if row["paused"]],
        "delayed": broker.delayed,
        "limits": limits,
        "workers": workers,
        "failures": [_failure_row(f) for f in failures],
        "unique": unique,
        "unique_limit": UNIQUE_ON_PAGE,
        "failures_url": reverse("web-operations-failures"),
        "deadletters_url": reverse("web-deadletters"),
        "revoked": revoked,
    }
    return render(request, "web/operations/index.html", context)


@require_GET
def failures_view(request: HttpRequest) -> HttpResponse:
    """Every kept failure (the newest KEEP), newest first."""
    client = _redis()
    try:
        failures = recent(client, KEEP)
    except redis.RedisError as exc:
        return _unreachable(request, "Recent failures", "web/operations/failures.html", exc)
    finally:
        client.close()
    context = {
        **admin.site.each_context(request),
        "title": "Recent failures",
        "failures": [_failure_row(f) for f in failures],
        "keep": KEEP,
    }
    return render(request, "web/operations/failures.html", context)


def _staff(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    return admin.site.admin_view(view)  # anyone but logged-in staff goes to the login page


urlpatterns: list[URLPattern] = [
    path("", _staff(index), name="web-operations"),
    path("failures/", _staff(failures_view), name="web-operations-failures"),
]

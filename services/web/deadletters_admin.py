"""The admin's "Dead letters" page: list, read, replay and purge what workers could not run.

There is no model: entries live in Redis (`common.deadletters`). The views sit under
/admin/deadletters/ behind `admin.site.admin_view`, so only logged-in staff reach them,
and each checks its own permission (web/models.py) on top, 403 without it: reading needs
`web.view_deadletter`, replaying `web.replay_deadletter` (a replayed payment is a real
charge), purging `web.purge_deadletter`. Pages show only the buttons the user may press.
Every change is a CSRF-protected POST whose outcome comes back as a Django message.
Replay goes through `common.deadletters.replay`, the same code as `manage.py deadletters`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import redis
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_GET, require_POST

from common.deadletters import REASONS, DeadLetter, DeadLetters
from common.deadletters.replay import no_such_entry, opened_store, readable, replay
from common.masking import mask_text, redact_url
from contracts.declare import all_contracts
from web.models import PURGE_DEADLETTER, REPLAY_DEADLETTER, VIEW_DEADLETTER

SHOWN = 200  # entries on one page; the filters narrow it down
FILTERS = ("queue", "task", "reason")


def _filters(data: Any) -> dict[str, str]:
    chosen = {name: (data.get(name) or "").strip() for name in FILTERS}
    if chosen["reason"] not in REASONS:
        chosen["reason"] = ""
    return {name: value for name, value in chosen.items() if value}


def _list_url(filters: dict[str, str]) -> str:
    url = reverse("web-deadletters")
    return f"{url}?{urlencode(filters)}" if filters else url


def _matching(store: DeadLetters, filters: dict[str, str], limit: int | None) -> list[DeadLetter]:
    return store.list(
        filters.get("queue"), task=filters.get("task"), reason=filters.get("reason"), limit=limit
    )


def _row(entry: DeadLetter) -> dict[str, Any]:
    detail = mask_text(" ".join(entry.detail.split()))
    return {
        "id": entry.id,
        "time": datetime.fromtimestamp(entry.time, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "queue": entry.queue,
        "task": entry.task or "-",
        "task_id": entry.task_id or "-",
        "reason": entry.reason,
        "detail": detail if len(detail) <= 120 else detail[:119] + "…",
    }


def _store_down(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """An unreachable Redis becomes a page saying so, not a 500 with a traceback."""

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except redis.RedisError as exc:
            from common.settings import get_settings

            where = redact_url(get_settings().redis_url)
            text = (
                f"Could not reach the dead-letter store at {where} ({type(exc).__name__}). Is Redis running?"
            )
            context = {**admin.site.each_context(request), "title": "Dead letters", "error": text}
            return render(request, "web/deadletters/list.html", context, status=503)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def _needs(permission: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Refuse (403) a user without `permission`; checked before Redis is touched."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.has_perm(permission):
                raise PermissionDenied(f"{permission} is needed here")
            return view(request, *args, **kwargs)

        wrapped.__name__ = view.__name__
        wrapped.__doc__ = view.__doc__
        return wrapped

    return decorate


def _may(request: HttpRequest) -> dict[str, bool]:
    """What the pages offer this user: only the buttons their permissions allow."""
    user = request.user
    return {"may_replay": user.has_perm(REPLAY_DEADLETTER), "may_purge": user.has_perm(PURGE_DEADLETTER)}


@require_GET
@_needs(VIEW_DEADLETTER)
@_store_down
def index(request: HttpRequest) -> HttpResponse:
    """Entries, newest first, filtered by queue, task and reason; counts per queue."""
    filters = _filters(request.GET)
    with opened_store() as store:
        entries = _matching(store, filters, SHOWN + 1)
        counts = {queue: store.count(queue) for queue in store.queues()}
    declared = all_contracts()
    context = {
        **admin.site.each_context(request),
        "title": "Dead letters",
        "rows": [_row(e) for e in entries[:SHOWN]],
        "more": len(entries) > SHOWN,
        "shown": SHOWN,
        "counts": counts,
        "total": sum(counts.values()),
        "filters": filters,
        "reasons": REASONS,
        "queues": sorted(set(counts) | {c.queue for c in declared}),
        "tasks": sorted(c.name for c in declared),
        **_may(request),
    }
    return render(request, "web/deadletters/list.html", context)


@require_GET
@_needs(VIEW_DEADLETTER)
@_store_down
def entry(request: HttpRequest, entry_id: str) -> HttpResponse:
    """One entry with its message decoded (personal data masked)."""
    with opened_store() as store:
        found = store.get(entry_id)
    if found is None:
        messages.error(request, no_such_entry(entry_id))
        return HttpResponseRedirect(reverse("web-deadletters"))
    message = readable(found)
    context = {
        **admin.site.each_context(request),
        "title": f"Dead letter {found.id}",
        "row": _row(found),
        "detail": mask_text(found.detail),
        "worker": found.worker or "-",
        "size": len(found.raw_bytes),
        "message": message if isinstance(message, str) else json.dumps(message, indent=2, ensure_ascii=False),
        **_may(request),
    }
    return render(request, "web/deadletters/entry.html", context)


@require_POST
@_needs(REPLAY_DEADLETTER)
@_store_down
def replay_view(request: HttpRequest) -> HttpResponse:
    """Replay the posted ids; each outcome (task id, or why it was refused) becomes a message."""
    ids = request.POST.getlist("ids")
    back = _list_url(_filters(request.POST))
    if not ids:
        messages.warning(request, "Select the dead letters to replay first.")
        return HttpResponseRedirect(back)
    with opened_store() as store:
        outcomes = [replay(store, entry_id) for entry_id in ids]
    for outcome in outcomes:
        level = messages.SUCCESS if outcome.replayed else messages.ERROR
        messages.add_message(request, level, mask_text(str(outcome)))
    if len(ids) == 1 and not outcomes[0].replayed and request.POST.get("from") == "entry":
        return HttpResponseRedirect(reverse("web-deadletters-entry", args=[ids[0]]))
    return HttpResponseRedirect(back)


@require_POST
@_needs(PURGE_DEADLETTER)
@_store_down
def purge_view(request: HttpRequest) -> HttpResponse:
    """Purge the selected entries, or all matching the filters, after a confirmation page.

    The confirmation carries the time it was shown: entries dead-lettered after that are
    not purged by a confirmation that never listed them.
    """
    filters = _filters(request.POST)
    scope = "filtered" if request.POST.get("scope") == "filtered" else "selected"
    ids = request.POST.getlist("ids")
    if scope == "selected" and not ids:
        messages.warning(request, "Select the dead letters to purge first.")
        return HttpResponseRedirect(_list_url(filters))
    with opened_store() as store:
        if request.POST.get("confirm") != "yes":
            if scope == "filtered":
                matching = [_row(e) for e in _matching(store, filters, None)]
            else:
                matching = [_row(e) for e in (store.get(i) for i in ids) if e is not None]
            context = {
                **admin.site.each_context(request),
                "title": "Purge dead letters?",
                "scope": scope,
                "filters": filters,
                "rows": matching[:SHOWN],
                "count": len(matching),
                "ids": [r["id"] for r in matching] if scope == "selected" else [],
                "shown_at": f"{time.time():.3f}",
                "back": _list_url(filters),
            }
            return render(request, "web/deadletters/purge_confirm.html", context)
        if scope == "filtered":
            try:
                shown_at = float(request.POST.get("shown_at", ""))
            except ValueError:
                shown_at = 0.0
            ids = [e.id for e in _matching(store, filters, None) if e.time <= shown_at]
        removed = sum(store.remove(entry_id) for entry_id in ids)
    messages.success(request, f"Removed {removed} dead letter(s).")
    return HttpResponseRedirect(_list_url(filters))


def _staff(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    return admin.site.admin_view(view)


urlpatterns: list[URLPattern] = [
    path("", _staff(index), name="web-deadletters"),
    path("replay/", _staff(replay_view), name="web-deadletters-replay"),
    path("purge/", _staff(purge_view), name="web-deadletters-purge"),
    path("entry/<path:entry_id>/", _staff(entry), name="web-deadletters-entry"),
]

"""The operations page's Pause and Resume buttons: stop a queue's tasks from starting on every
worker, and start them again (`common.transport.broker.pause`, as `manage.py queues` does).

Each is a CSRF-protected POST behind `admin.site.admin_view` (staff only) that also needs
`web.pause_queue` (web/models.py), checked here before Redis is touched: 403 without it. The
outcome comes back as a Django message on the operations page; the pause records the
operator's user name as who paused it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from common.masking import mask_text, redact_url
from common.transport.broker.pause import UnknownQueueError, pause_queue, resume_queue
from web.models import PAUSE_QUEUE


def _redis() -> Any:
    from common.settings import get_settings
    from common.transport import tls

    s = get_settings()
    return tls.redis_from_url(
        s.redis_url, socket_timeout=s.broker_socket_timeout, socket_connect_timeout=s.broker_socket_timeout
    )


def _acting(
    act: Callable[[HttpRequest, Any, str], None],
) -> Callable[[HttpRequest], HttpResponse]:
    """The permission check, the posted queue, Redis and its errors around `act`; back to the page."""

    def view(request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(PAUSE_QUEUE):
            raise PermissionDenied(f"{PAUSE_QUEUE} is needed here")
        queue = (request.POST.get("queue") or "").strip()
        client = _redis()
        try:
            act(request, client, queue)
        except UnknownQueueError as exc:
            messages.error(request, mask_text(str(exc)))
        except redis.RedisError as exc:
            from common.settings import get_settings

            where = redact_url(get_settings().redis_url)
            messages.error(
                request, f"Could not reach Redis at {where} ({type(exc).__name__}): nothing changed."
            )
        finally:
            client.close()
        return HttpResponseRedirect(reverse("web-operations"))

    view.__name__ = act.__name__
    view.__doc__ = act.__doc__
    return require_POST(view)


def _pause(request: HttpRequest, client: Any, queue: str) -> None:
    """Pause the posted queue, recording who and why."""
    reason = request.POST.get("reason") or ""
    pause, made = pause_queue(client, queue, by=f"{request.user.get_username()} (admin)", reason=reason)
    if made:
        messages.success(
            request, f"Paused {queue}: no worker starts its tasks until it is resumed; running ones finish."
        )
    else:
        messages.warning(request, f"{queue} was already paused by {pause.by}.")


def _resume(request: HttpRequest, client: Any, queue: str) -> None:
    """Resume the posted queue."""
    ended = resume_queue(client, queue)
    if ended is None:
        messages.warning(request, f"{queue} was not paused.")
    else:
        messages.success(request, f"Resumed {queue}: its waiting tasks start now.")


def _staff(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    return admin.site.admin_view(view)


urlpatterns: list[URLPattern] = [
    path("pause/", _staff(_acting(_pause)), name="web-queues-pause"),
    path("resume/", _staff(_acting(_resume)), name="web-queues-resume"),
]

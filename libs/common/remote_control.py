"""The remote control commands a worker obeys: read-only ones by default.

Whoever can write to Redis can send a worker any remote control command (the broker is the
trust boundary), so a worker refuses all but the ones below unless
WORKER_REMOTE_CONTROL_ALLOW names more. Installed by `common.process_hooks` when a worker runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from celery.worker.control import Panel

from common.settings import get_settings

logger = logging.getLogger("common.worker")

# Remote control commands a worker obeys by default: reading and event switching (Flower).
# `revoke` (it cancels any task by id), `hello` (mingle's start-up sync: it merges the
# sender's revoked ids, a forged revoke by another name) and everything else - shutdown,
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

# What this process's workers obey now, as last restricted (Celery's default: everything),
# and the command names (and aliases) they refuse.
_applied: frozenset[str] | None = None
_refused_now: list[str] = []


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


def _ours(handler: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a replacement so a later restriction can put the original back."""
    handler.__dict__["common_restricted"] = original
    return handler


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


def _restore() -> None:
    """Put back every handler an earlier restriction replaced."""
    for key, handler in list(Panel.data.items()):
        original = getattr(handler, "common_restricted", None)
        if original is not None:
            Panel.data[key] = original


def restrict_remote_control(allowed: Iterable[str] | None) -> list[str]:
    """Make this process's workers refuse every remote control command not in `allowed`.

    Celery's registry (`celery.worker.control.Panel.data`, the handlers every worker's
    pidbox dispatches to) is changed in place before the worker starts: a refused command
    answers `{"error": ...}` and logs a WARNING, and the worker carries on. Returns the
    names refused. `allowed=None` obeys everything (Celery's default). Idempotent: the same
    `allowed` again changes nothing; another one replaces the earlier restriction.
    """
    global _applied
    wanted = None if allowed is None else frozenset(allowed)
    if wanted == _applied:
        return list(_refused_now)
    _restore()
    _applied = wanted
    _refused_now.clear()
    if wanted is None:
        return []
    for key, name in _canonical_names().items():
        handler = Panel.data[key]
        if name not in wanted:
            Panel.data[key] = _ours(_refused(key, "not in WORKER_REMOTE_CONTROL_ALLOW"), handler)
            _refused_now.append(key)
        elif name in TERMINATING and "terminate" not in wanted:
            Panel.data[key] = _ours(_no_terminate(key, handler), handler)
    _refused_now.sort()
    return list(_refused_now)


def install_remote_control_policy() -> None:
    """Restrict this process's workers to WORKER_REMOTE_CONTROL_ALLOW (and the default)."""
    restrict_remote_control(allowed_remote_control(get_settings().worker_remote_control_allow))

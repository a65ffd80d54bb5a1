"""Bounds on every socket the transport opens, so no read waits forever on a half-open
connection."""

from __future__ import annotations

import socket
from typing import Any

# Every socket the transport opens is bounded, whatever the configuration says: kombu's
# defaults (no socket_timeout, no keepalive) let a read on a half-open connection (a NAT or
# load balancer that dropped its state, a partition) wait forever, and Celery bounds only the
# sockets it knows of (a channel's `client` and `subclient`) when it cleans up after a
# connection error, not the channel's own client, nor the owner's. Used where the transport
# options leave these unset; `common.celery_config` sets them from Settings.
DEFAULT_SOCKET_TIMEOUT = 5.0
# TCP keepalive: a silent peer is probed after 10 s idle, every 5 s, and the kernel fails the
# socket after 3 unanswered probes (about 25 s): a read blocked on a dead peer then ends.
DEFAULT_KEEPALIVE_OPTIONS = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 10),
        (getattr(socket, "TCP_KEEPINTVL", None), 5),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}
# How often the event loop looks for a BRPOP whose reply is overdue (`Channel._drop_overdue_brpop`).
BRPOP_CHECK_INTERVAL = 1.0
# The most a read may wait while a channel closes (`Channel.close`): it is clean-up only.
CLOSE_TIMEOUT = 2.0


def bounded(params: dict[str, Any]) -> dict[str, Any]:
    """kombu's connection parameters with every socket bounded where they leave it unbounded:
    a read times out (DEFAULT_SOCKET_TIMEOUT) and TCP keepalive finds a dead peer."""
    for key in ("socket_timeout", "socket_connect_timeout"):
        if key in params and params[key] is None:  # a unix socket has no connect timeout
            params[key] = DEFAULT_SOCKET_TIMEOUT
    if "socket_keepalive" in params:  # TCP only: kombu drops it for a unix socket
        if params["socket_keepalive"] is None:
            params["socket_keepalive"] = True
        if params["socket_keepalive"] and not params.get("socket_keepalive_options"):
            params["socket_keepalive_options"] = dict(DEFAULT_KEEPALIVE_OPTIONS)
    return params

"""Free loopback ports for processes this project starts itself.

Chosen below the kernel's ephemeral range, never with bind(0). A server given an ephemeral
port can lose it while it is down (a Redis restart in the fault suite): any outgoing
connection may take it as its local port, and a client retrying `connect()` to it can even
connect to itself (TCP simultaneous open), after which it "talks to Redis" with nobody. Both
happened under a loaded CI box; ports outside that range are never handed out implicitly.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default start


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range."""
    high = max(_ephemeral_low() - 1, LOWEST + 1000)
    for _ in range(200):
        port = random.randint(LOWEST, high)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} between {LOWEST} and {high}")

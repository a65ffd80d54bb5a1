"""A worker process's lease, refreshed by a small helper process the worker's tasks cannot starve.

Why a process and not the heartbeat thread alone: a thread needs the GIL to run, and a task
that holds the GIL in one long C call (a catastrophic regex, a huge `json.loads`, a C
extension that never releases it) stops every other thread of its process for as long as
the call lasts. With the lease refreshed only by `ownership.Owner`'s thread, a 22 s hold
against a 10 s heartbeat timeout made another worker declare the process dead and requeue
its in-flight messages: the task ran again elsewhere while it was still running here, and
again after that. This helper is a separate interpreter with a GIL of its own, so the lease
says "the process is alive", not "the process's Python threads got scheduled".

What moved here, and what did not:
- Here: refreshing this owner's own lease in `jobs.owners` (one tiny Lua call per tick, on
  Redis's clock like the tick script), and nothing else. It judges this process alive.
- On the owner's thread, unchanged (`scripts.TICK_SCRIPT`): the consumed-queues record, the
  promotion of due delayed messages and the recovery of dead owners' messages. None of
  these judge this process; when they run late nothing is lost (another worker's tick
  does them meanwhile). The tick still refreshes the lease too, so when the helper cannot
  run (see below) the heartbeat is exactly what it was before.

It must not outlive its parent, or a SIGKILLed worker's messages would never come back:
- It reads its parameters from a stdin pipe whose only writer is the parent; when the
  parent dies for any reason (SIGKILL, OOM) the kernel closes that pipe and the helper sees
  EOF at once (it waits on stdin between ticks, so it notices within milliseconds).
  Processes forked from the worker (the prefork pool's children) would keep the pipe open:
  the write end is closed in every forked child (`os.register_at_fork`).
- As a backstop, it exits when `getppid()` is no longer the worker (reparented: the parent
  is gone) or the parent is a zombie, checked at least every second. It ignores SIGINT,
  SIGTERM and SIGHUP: a Ctrl-C or a signal to the process group must not take the lease
  away from a worker that is finishing its tasks in a warm shutdown; it ends with its parent.
- While the parent is stopped (SIGSTOP, a debugger) the helper does not refresh: a stopped
  process runs nothing, as before.
What a lease now means: the process exists and is not stopped. A process stuck forever
inside one C call keeps its messages; restarting it is the liveness probe's job
(`common.liveness`: a worker that does not answer ping), after which they come back.

Parameters go over the pipe, never on the command line: the Redis password must not show in
`ps`. The helper is run by path (`python .../heartbeat.py`), not with `-m`, so it imports
only redis-py and the standard library, not the `common` package (Celery, kombu, Django).
It costs one interpreter with redis-py loaded (measured: 0.2-0.6 s of CPU at start, ~32 MB
resident) and one EVALSHA per tick (0.02 s of CPU in 20 s at the default 0.5 s tick); it
sleeps in `select` the rest of the time.

When it cannot run, the owner keeps heartbeating on its thread and says so once, in its log:
- `sentinel://` brokers: their connections find the primary through a proxy object of
  kombu's (`SentinelManagedConnection`) that cannot be handed to another process; rebuilding
  the sentinel lookup in the helper is left for later. Only plain TCP, TLS and unix-socket
  connections (`redis.Connection`, `SSLConnection`, `UnixDomainSocketConnection`, which is
  what `redis://`, `rediss://` and `socket://` URLs give) go to the helper.
- the interpreter cannot start it, or it exits (the owner tries again at most every 30 s).

Only the process that consumes (the one that creates an `Owner`: the worker's main process
under prefork) starts a helper.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import sys
import time
from typing import Any, cast

# On Redis's clock, like the tick script: leases are compared with Redis's TIME.
LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
return now
"""

# The connection classes a helper can rebuild from their name; anything else (sentinel) stays
# on the owner's thread.
CONNECTION_CLASSES = ("Connection", "SSLConnection", "UnixDomainSocketConnection")

# What a helper connects with: where, who, how long to wait, TLS (every `ssl_*`). Anything else
# in a pool's kwargs (client-side caches, redis-py's own bookkeeping) is the parent's business.
CONNECTION_PARAMS = (
    "host", "port", "path", "db", "username", "password", "client_name", "protocol",
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "retry_on_timeout", "health_check_interval",
)  # fmt: skip

PARENT_CHECK = 1.0  # seconds between getppid() checks when nothing arrives on stdin


class Helper:
    """The parent's handle on a running helper process."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.pid: int = proc.pid
        self.started = time.monotonic()

    def exited(self) -> int | None:
        """The helper's exit code if it has exited, else None."""
        return cast("int | None", self.proc.poll())

    def stop(self, timeout: float = 2.0) -> None:
        """Close the pipe (the helper's signal to exit) and reap it; SIGKILL if it lingers."""
        import subprocess

        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def forget_in_child(self) -> None:
        """In a forked child: close the inherited write end, so the helper sees EOF when the
        parent dies even while the child lives on (a prefork pool process)."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        self.proc.returncode = 0  # not this process's child: never waited on here


_live: dict[int, Helper] = {}  # id(helper) -> helper, in the process that started them


def _close_pipes_in_child() -> None:
    helpers = list(_live.values())
    _live.clear()
    for helper in helpers:
        helper.forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_pipes_in_child)


def helper_params(pool_params: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(parameters a helper can connect with, "") or (None, why it cannot)."""
    import redis

    cls = pool_params.get("connection_class", redis.Connection)
    name = next((n for n in CONNECTION_CLASSES if getattr(redis, n) is cls), None)
    if name is None:
        what = "a sentinel:// connection" if "Sentinel" in getattr(cls, "__name__", "") else repr(cls)
        return None, f"{what} cannot be handed to a helper process"
    if pool_params.get("credential_provider") is not None:
        return None, "a credential provider cannot be handed to a helper process"
    params = {
        k: v
        for k, v in pool_params.items()
        if v is not None and (k in CONNECTION_PARAMS or k.startswith("ssl_"))
    }
    params["connection_class"] = name
    return params, ""


def start(pool_params: dict[str, Any], *, owner: str, key: str, interval: float) -> tuple[Helper | None, str]:
    """Start a helper refreshing `owner`'s lease in the zset `key` every `interval` seconds.

    Returns (the helper, "") or (None, why not); never raises.
    """
    import subprocess

    params, why = helper_params(pool_params)
    if params is None:
        return None, why
    config = {"params": params, "owner": owner, "key": key, "interval": interval, "parent": os.getpid()}
    try:
        payload = pickle.dumps(config)
    except Exception as exc:  # noqa: BLE001 - an unusual connection parameter
        return None, f"connection parameters cannot be handed to a helper process ({exc})"
    try:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError as exc:
        return None, f"the helper process could not start ({exc})"
    try:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.flush()
    except OSError as exc:  # it died at once
        proc.kill()
        proc.wait()
        return None, f"the helper process could not start ({exc})"
    helper = Helper(proc)
    _live[id(helper)] = helper
    return helper, ""


def stop(helper: Helper, timeout: float = 2.0) -> None:
    _live.pop(id(helper), None)
    helper.stop(timeout)


# --- the helper process ----------------------------------------------------------------------
def _log(message: str) -> None:
    """A warning on the worker's stderr, as one JSON object when the worker logs JSON (LOG_FORMAT)."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
        import json
        from datetime import UTC, datetime

        line = json.dumps(
            {
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "level": "WARNING",
                "logger": "common.transport.broker.heartbeat",
                "message": message,
                "process": "heartbeat-helper",
                "pid": os.getpid(),
            }
        )
    else:
        line = f"[broker heartbeat helper {os.getpid()}] WARNING {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _parent_state(parent: int) -> str:
    """The parent's state letter from /proc ('R', 'S', 'T', 'Z', ...), '' where unknown."""
    try:
        with open(f"/proc/{parent}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3].decode()
    except (OSError, ValueError):
        return ""


def _parent_gone(parent: int, wait: float) -> bool:
    """Wait up to `wait` s for the pipe to close; True once the parent is gone."""
    try:
        ready, _, _ = select.select([0], [], [], max(0.0, wait))
    except InterruptedError:
        ready = []
    if ready and not os.read(0, 4096):
        return True  # EOF: the parent closed the pipe, or died
    return os.getppid() != parent or _parent_state(parent) in ("Z", "X")


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # it ends with its parent, not with its process group
    # Run by path: this directory is on sys.path, and nothing is imported from it.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        config = pickle.load(sys.stdin.buffer)
    except EOFError:
        return 0
    parent, interval = int(config["parent"]), float(config["interval"])
    if _parent_gone(parent, 0):
        return 0  # closed before it got going (an owner stopped at once): no redis import
    import redis

    params = dict(config["params"])
    params["connection_class"] = getattr(redis, params["connection_class"])
    client = redis.Redis(connection_pool=redis.ConnectionPool(**params))
    lease = client.register_script(LEASE_SCRIPT)
    keys, args = [config["key"]], [config["owner"]]
    # The owner took its first lease itself before starting the helper: the first refresh is
    # due one interval later.
    due = time.monotonic() + interval
    failing = False
    while True:
        now = time.monotonic()
        if _parent_gone(parent, min(PARENT_CHECK, due - now)):
            return 0
        now = time.monotonic()
        if now < due:
            continue
        due = max(due + interval, now + interval / 2)
        if _parent_state(parent) in ("T", "t"):
            continue  # stopped (SIGSTOP, a debugger): a stopped process holds no lease
        try:
            lease(keys=keys, args=args)
        except redis.RedisError as exc:
            if not failing:
                _log(f"lease refresh failed ({type(exc).__name__}); retrying every {interval:g} s")
            failing = True
        else:
            if failing:
                _log("lease refresh works again")
            failing = False


if __name__ == "__main__":
    sys.exit(main())

"""The local platform: Redis and the outside peers a run needs, and the platform's processes.

One implementation for the three places that run the platform on a laptop or in CI: the
pytest plugin, the local stack (`./scripts/run-stack`) and the benchmark. Each peer is
started on first use, on a free loopback port, and stopped with the platform:
- `redis`: a `redis-server` of its own (`devtools.local_redis`);
- `smtp`, `crm`, `gateway`: the loopback sandboxes (`devtools.sandboxes`).
With `use_environment=True` (the stack) a peer the environment already names (REDIS_URL,
EMAIL_HOST/EMAIL_PORT, CRM_URL, PAYMENT_GATEWAY_URL) is used as it is; tests and the
benchmark always start their own, so nothing they do reaches a real service.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from devtools.processes import ServiceProcess

PEERS = ("redis", "smtp", "crm", "gateway")
# Which settings name each peer: where the environment sets one, the stack uses it.
CONFIGURED_BY = {
    "redis": ("REDIS_URL",),
    "smtp": ("EMAIL_HOST", "EMAIL_PORT"),
    "crm": ("CRM_URL",),
    "gateway": ("PAYMENT_GATEWAY_URL",),
}
# Every process but the web side runs on the platform's settings, without the admin.
BACKEND_SETTINGS = "common.django_settings"


class LocalPlatform:
    def __init__(self, data_dir: Path, *, use_environment: bool = False) -> None:
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.use_environment = use_environment
        self._stack = ExitStack()
        self._peers: dict[str, Any] = {}
        self.env: dict[str, str] = {"DATA_DIR": str(data_dir)}

    def __enter__(self) -> LocalPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *peers: str) -> dict[str, str]:
        """Start `peers` (all by default) unless running; export and return their settings."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in peers or PEERS:
            self.peer(name)
        os.environ.update(self.env)
        return dict(self.env)

    def peer(self, name: str) -> Any:
        """The running stand-in for `name`, started on first use; None if the environment names it."""
        if name not in PEERS:
            raise ValueError(f"no local peer {name!r}; the peers are {', '.join(PEERS)}")
        if name in self._peers:
            return self._peers[name]
        if self.use_environment and any(var in os.environ for var in CONFIGURED_BY[name]):
            self._peers[name] = None
            return None
        started = self._stack.enter_context(_new(name))
        self._peers[name] = started
        self.env.update(_settings(name, started))
        os.environ.update(self.env)
        return started

    def started(self) -> dict[str, Any]:
        """The peers this platform started (not those the environment named)."""
        return {name: peer for name, peer in self._peers.items() if peer is not None}

    def stop(self) -> None:
        self._stack.close()
        self._peers.clear()

    def worker(
        self,
        service: str,
        *,
        name: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> ServiceProcess:
        """A worker of `service` run from its real entry point (`python -m <service>.worker`)."""
        return self.process(name or service, f"{service}.worker", args, env)

    def process(
        self, name: str, module: str, args: Sequence[str] = (), env: Mapping[str, str] | None = None
    ) -> ServiceProcess:
        """One of the platform's processes, logging to `<data_dir>/logs/<name>.log` (not started)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return platform_process(name, module, self.log_dir / f"{name}.log", args, {**self.env, **(env or {})})

    def workers(self, services: Iterable[str], **kwargs: Any) -> list[ServiceProcess]:
        return [self.worker(s, **kwargs) for s in services]


def platform_process(
    name: str, module: str, log: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> ServiceProcess:
    """A process of the platform run from its real entry point, on the backend's settings."""
    return ServiceProcess(
        name, module, args, env={"DJANGO_SETTINGS_MODULE": BACKEND_SETTINGS, **(env or {})}, log=log
    )


def worker_process(
    service: str, log: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None, name: str = ""
) -> ServiceProcess:
    """A worker of `service` (`python -m <service>.worker`): how tests, stack and bench all start one."""
    return platform_process(name or service, f"{service}.worker", log, args, env)


def _new(name: str) -> Any:
    if name == "redis":
        from devtools.local_redis import LocalRedis

        return LocalRedis()
    if name == "smtp":
        from devtools.sandboxes.smtp import SMTPSink

        return SMTPSink()
    if name == "crm":
        from devtools.sandboxes.crm import CRMSandbox

        return CRMSandbox()
    from devtools.sandboxes.gateway import GatewaySandbox

    return GatewaySandbox()


def _settings(name: str, peer: Any) -> dict[str, str]:
    if name == "redis":
        return {"REDIS_URL": peer.url}
    if name == "smtp":
        return {"EMAIL_HOST": peer.host, "EMAIL_PORT": str(peer.port)}
    if name == "crm":
        return {"CRM_URL": peer.url}
    return {"PAYMENT_GATEWAY_URL": peer.url}

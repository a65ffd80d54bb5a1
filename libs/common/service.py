"""What a worker service is, declared once in its own folder (`services/<name>/service.py`).

The worker's entry point, liveness, the local stack, the benchmark and the tests read the
declaration instead of repeating its pool and concurrency; the queue is the name, as the
routing rule (common.routing) has it. Declared per service, so tuning one service's pool
rebuilds that service alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from common.routing import SERVICES

POOLS = ("prefork", "threads", "solo")


@dataclass(frozen=True)
class WorkerService:
    name: str
    pool: str
    concurrency: int
    why: str = ""

    def __post_init__(self) -> None:
        if self.name not in SERVICES:
            raise ValueError(f"{self.name!r} is no worker service; add it to common.routing.SERVICES first")
        if self.pool not in POOLS:
            raise ValueError(f"{self.name}: pool {self.pool!r} is not one of {', '.join(POOLS)}")
        if self.concurrency < 1:
            raise ValueError(f"{self.name}: concurrency must be at least 1, not {self.concurrency}")

    @property
    def queue(self) -> str:
        return self.name

    def node(self, hostname: str) -> str:
        """The worker's node name on `hostname`, as `celery inspect` and liveness address it."""
        return f"{self.name}@{hostname}"


def declared(name: str) -> WorkerService:
    """The declaration of the service `name` (its `<name>.service` module must be importable)."""
    if name not in SERVICES:
        raise LookupError(f"no worker service {name!r}; the services are {', '.join(SERVICES)}")
    service = importlib.import_module(f"{name}.service").SERVICE
    if not isinstance(service, WorkerService) or service.name != name:
        raise TypeError(f"{name}.service.SERVICE must be WorkerService(name={name!r}, ...)")
    return service

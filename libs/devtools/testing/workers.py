"""Real worker processes of the services under test."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from common.celery_app import current_app
from devtools.platform import worker_process
from devtools.processes import ServiceProcess, wait_for_workers


class Workers:
    """Starts `python -m <service>.worker` for each service and waits until each answers ping."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, ServiceProcess] = {}
        self.names: dict[str, str] = {}

    def start(
        self, services: Iterable[str], env: Mapping[str, Mapping[str, str]] | None = None, timeout: float = 90
    ) -> dict[str, str]:
        services = list(services)
        env = env or {}
        for service in services:
            proc = worker_process(
                service,
                self.log_dir / f"{service}-worker.log",
                ["--without-mingle", "--without-gossip"],
                env.get(service, {}),
            )
            self.procs[service] = proc.start()
        deadline = time.monotonic() + timeout
        while True:
            dead = [s for s in services if not self.procs[s].running]
            if dead:
                raise RuntimeError(f"worker(s) exited during start-up: {', '.join(dead)}\n{self.logs()}")
            try:
                self.names.update(wait_for_workers(current_app(), services, timeout=1))
                return self.names
            except TimeoutError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        out = []
        for service in self.procs:
            path = self.log_dir / f"{service}-worker.log"
            if path.exists():
                out.append(
                    f"--- {service} worker log (tail) ---\n" + "\n".join(path.read_text().splitlines()[-30:])
                )
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        self.procs.clear()


@contextmanager
def running(data_dir: Path, name: str, services: Iterable[str]) -> Iterator[dict[str, str]]:
    """Workers of `services` with their logs under `data_dir/name`, stopped on leaving; yields
    each service's worker hostname."""
    log_dir = data_dir / name
    log_dir.mkdir(exist_ok=True)
    workers = Workers(log_dir)
    try:
        yield workers.start(services)
    finally:
        workers.stop()

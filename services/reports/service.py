"""The reports worker service, declared once (see common.service): pool and concurrency."""

from common.service import WorkerService

SERVICE = WorkerService(
    name="reports",
    pool="prefork",
    concurrency=2,
    why="Reports are CPU-bound: processes, one per core of a 2-core box; time limits enforced.",
)

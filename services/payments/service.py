"""The payments worker service, declared once (see common.service): pool and concurrency."""

from common.service import WorkerService

SERVICE = WorkerService(
    name="payments",
    pool="threads",
    concurrency=8,
    why="Charges wait on the gateway; each thread holds one DB connection and row lock.",
)

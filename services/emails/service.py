"""The emails worker service, declared once (see common.service): pool and concurrency."""

from common.service import WorkerService

SERVICE = WorkerService(
    name="emails",
    pool="threads",
    concurrency=8,
    why="Mail is I/O-bound (SMTP round trips): threads, not processes.",
)

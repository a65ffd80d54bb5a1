"""The sync worker service, declared once (see common.service): pool and concurrency."""

from common.service import WorkerService

SERVICE = WorkerService(
    name="sync",
    pool="threads",
    concurrency=16,
    why="Each sync waits on the CRM's HTTP round trip: threads keep many in flight cheaply.",
)

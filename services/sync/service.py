"""The sync worker service, declared once (see common.service): pool and concurrency."""

from common.service import WorkerService

SERVICE = WorkerService(
    name="sync",
    pool="threads",
    concurrency=32,
    why=(
        "Each sync waits on the CRM's HTTP round trip: 32 threads keep many in flight (64 were "
        "CPU-bound, no faster). Each thread holds a database connection: 32 per worker process "
        "count against PostgreSQL's max_connections (docs/operations.md, Database connections)."
    ),
)

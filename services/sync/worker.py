"""Entry point of the CRM sync worker (pex `sync`)."""

from common.worker import run_worker
from sync.app import app

# Each sync waits on the CRM's HTTP round trip: threads keep many in flight cheaply.
POOL, CONCURRENCY = "threads", 16


def main() -> None:
    run_worker(app, pool=POOL, concurrency=CONCURRENCY)


if __name__ == "__main__":
    main()

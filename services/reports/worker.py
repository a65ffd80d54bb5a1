"""Entry point of the reports worker (pex `reports`)."""

from common.worker import run_worker
from reports.app import app

# Reports are CPU-bound: processes, one per core of a 2-core box; time limits enforced.
POOL, CONCURRENCY = "prefork", 2


def main() -> None:
    run_worker(app, pool=POOL, concurrency=CONCURRENCY)


if __name__ == "__main__":
    main()

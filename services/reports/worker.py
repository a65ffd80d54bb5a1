"""Entry point of the reports worker (pex `reports`)."""

from common.worker import run_worker
from reports.app import app
from reports.service import SERVICE


def main() -> None:
    run_worker(app, pool=SERVICE.pool, concurrency=SERVICE.concurrency)


if __name__ == "__main__":
    main()

"""Entry point of the emails worker (pex `emails`)."""

from common.worker import run_worker
from emails.app import app
from emails.service import SERVICE


def main() -> None:
    run_worker(app, pool=SERVICE.pool, concurrency=SERVICE.concurrency)


if __name__ == "__main__":
    main()

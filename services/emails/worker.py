"""Entry point of the emails worker (pex `emails`)."""

from common.worker import run_worker
from emails.app import app

# Mail is I/O-bound (SMTP round trips): threads, not processes.
POOL, CONCURRENCY = "threads", 8


def main() -> None:
    run_worker(app, pool=POOL, concurrency=CONCURRENCY)


if __name__ == "__main__":
    main()

"""Entry point of the payments worker (pex `payments`)."""

from common.worker import run_worker
from payments.app import app

# Charges wait on the gateway; each thread holds one DB connection and row lock.
POOL, CONCURRENCY = "threads", 8


def main() -> None:
    run_worker(app, pool=POOL, concurrency=CONCURRENCY)


if __name__ == "__main__":
    main()

"""Entry point of the payments worker (pex `payments`)."""

from common.worker import run_worker
from payments.app import app
from payments.config import get_payment_settings
from payments.service import SERVICE


def main() -> None:
    run_worker(app, pool=SERVICE.pool, concurrency=SERVICE.concurrency, settings=[get_payment_settings])


if __name__ == "__main__":
    main()

"""Entry point of the emails worker (pex `emails`)."""

from common.worker import run_worker
from emails.app import app
from emails.config import get_mail_settings
from emails.service import SERVICE


def main() -> None:
    run_worker(app, pool=SERVICE.pool, concurrency=SERVICE.concurrency, settings=[get_mail_settings])


if __name__ == "__main__":
    main()

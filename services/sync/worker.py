"""Entry point of the CRM sync worker (pex `sync`)."""

from common.worker import run_worker
from sync.app import app
from sync.config import get_crm_settings
from sync.service import SERVICE


def main() -> None:
    run_worker(app, pool=SERVICE.pool, concurrency=SERVICE.concurrency, settings=[get_crm_settings])


if __name__ == "__main__":
    main()

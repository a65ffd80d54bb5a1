"""Stock Celery, the baseline: a bare app with the same settings and no platform layer.

It runs on kombu's own Redis transport, named by class: `common.transport.broker.install()` registers
our transport under kombu's `redis` alias (and kombu caches what an alias resolved to), so
a plain `redis://` URL would silently put the baseline on our transport in any process that
has built one of our apps (the bench itself does). `check_transport()` proves it.
"""

import os
import sys

from celery import Celery
from celery.signals import worker_ready

STOCK_TRANSPORT = "kombu.transport.redis:Transport"

app = Celery("stock")
app.conf.update(
    broker_url=os.environ["REDIS_URL"],
    broker_transport=STOCK_TRANSPORT,
    result_backend=os.environ["REDIS_URL"],
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_reject_on_worker_lost=True,
    timezone="UTC",
    task_default_queue="stock",
)
if os.environ.get("STOCK_VISIBILITY_TIMEOUT"):
    # The recovery measurement: as low as an operator could set it without tasks running
    # twice. kombu's sweeps for unacked messages keep their defaults (every 10 x 10 s).
    app.conf.broker_transport_options = {"visibility_timeout": float(os.environ["STOCK_VISIBILITY_TIMEOUT"])}


def check_transport() -> None:
    """Refuse to run the baseline on anything but kombu's stock Redis transport."""
    with app.connection_for_write() as conn:
        module = conn.transport.__class__.__module__
    if module != "kombu.transport.redis":
        raise RuntimeError(f"the stock app runs on {module}, not kombu.transport.redis")


@worker_ready.connect
def _check_worker_transport(**kwargs: object) -> None:
    try:
        check_transport()
    except RuntimeError as exc:
        print(exc, file=sys.stderr, flush=True)
        os._exit(3)  # the bench sees the worker gone and fails loudly


@app.task(name="stock.echo")
def echo(value: int) -> int:
    return value


@app.task(name="stock.io_call")
def io_call(url: str) -> int:
    import requests

    return requests.get(url, timeout=30).status_code


@app.task(name="stock.upsert")
def upsert(url: str, record: dict) -> int:
    """The CRM sync's HTTP call (POST a record), for the recovery measurement."""
    import requests

    response = requests.post(url, json=record, timeout=30)
    response.raise_for_status()
    return response.status_code


def main() -> None:
    check_transport()
    app.worker_main(["worker", "--queues=stock", "--hostname=stock@%h", *sys.argv[1:]])


if __name__ == "__main__":
    main()

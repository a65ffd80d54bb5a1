"""Stock Celery, the baseline: a bare app with the same settings and no platform layer."""

import os
import sys

from celery import Celery

app = Celery("stock")
app.conf.update(
    broker_url=os.environ["REDIS_URL"],
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


@app.task(name="stock.echo")
def echo(value: int) -> int:
    return value


@app.task(name="stock.io_call")
def io_call(url: str) -> int:
    import requests

    return requests.get(url, timeout=30).status_code


def main() -> None:
    app.worker_main(["worker", "--queues=stock", "--hostname=stock@%h", *sys.argv[1:]])


if __name__ == "__main__":
    main()

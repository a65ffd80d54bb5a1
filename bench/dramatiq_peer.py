"""Dramatiq, the second baseline: its actors, and a driver that enqueues and times round trips.

Runs only in the bench's own virtualenv (`dist/bench-venv`, made by `./scripts/bench`): the
standard library, dramatiq and redis, nothing of ours. Dramatiq is a benchmark peer, not a
dependency of any deployable, so it is not in the Pants lockfile. The workers are Dramatiq's
own CLI, with its defaults but for the queue:

    dramatiq bench.dramatiq_peer --processes 2 --threads 8 --queues bench

and the driver, whose last line on stdout is JSON:

    python -m bench.dramatiq_peer enqueue ACTOR N [URL]   # {"n", "seconds"}
    python -m bench.dramatiq_peer latency N               # {"ms": [...]}: N echo send -> get_result

Both read the broker's URL (`BENCH_DRAMATIQ_URL`, a Redis DB of its own on the bench's
redis-server). Each worker process keeps, in memory, when each task finished and its
argument, and writes them to `$BENCH_DRAMATIQ_OUT/<pid>.json` at shutdown: the bench gets
execution rates (first to last finish, as ours from `date_done`) and checks every task ran
exactly once, without adding a Redis command or a file write per task.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from typing import Any

# Not in the Pants lockfile, on purpose: the bench's own virtualenv has it.
import dramatiq  # pants: no-infer-dep
from dramatiq.brokers.redis import RedisBroker  # pants: no-infer-dep
from dramatiq.middleware import Middleware  # pants: no-infer-dep
from dramatiq.results import Results  # pants: no-infer-dep
from dramatiq.results.backends import RedisBackend  # pants: no-infer-dep

QUEUE = "bench"
URL = os.environ["BENCH_DRAMATIQ_URL"]


class Record(Middleware):
    """Per worker process: (finish time, first argument) of each task, and the failures."""

    def __init__(self) -> None:
        self.done: list[tuple[float, Any]] = []  # list.append is atomic: no lock on the hot path
        self.failed: list[str] = []

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        out = os.environ.get("BENCH_DRAMATIQ_OUT")
        if out:
            open(os.path.join(out, f"{os.getpid()}.ready"), "w").close()

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        if exception is not None:
            self.failed.append(f"{message.actor_name}: {exception!r}")
        else:
            self.done.append((time.time(), message.args[0] if message.args else None))

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        out = os.environ.get("BENCH_DRAMATIQ_OUT")
        if out:
            path = os.path.join(out, f"{os.getpid()}.json")
            with open(path + ".tmp", "w") as f:
                json.dump({"done": self.done, "failed": self.failed}, f)
            os.replace(path + ".tmp", path)


broker = RedisBroker(url=URL)
# Results is Dramatiq's opt-in middleware: only actors declared with store_results=True store.
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
broker.add_middleware(Record())  # after Results: a task's finish time includes storing its result
dramatiq.set_broker(broker)


# max_retries=0: a failure must show, not be retried with backoff for minutes.
@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop(i: int) -> None:
    return None


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def echo(i: int) -> int:
    return i


@dramatiq.actor(queue_name=QUEUE, max_retries=0, store_results=True)
def io_get(i: int, url: str) -> int:
    """The I/O-bound row's task: one HTTP GET on the CRM sandbox (its latency is the work)."""
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status}")
        return int(response.status)


def enqueue(actor: str, n: int, url: str = "") -> dict[str, Any]:
    send = {
        "noop": lambda i: noop.send(i),
        "echo": lambda i: echo.send(i),
        "io_get": lambda i: io_get.send(i, url),
    }[actor]
    t0 = time.perf_counter()
    for i in range(n):
        send(i)
    return {"n": n, "seconds": time.perf_counter() - t0}


def latency(n: int) -> dict[str, Any]:
    """`n` sequential round trips: echo.send(1), then block on its result."""
    # The first one waits for the workers to be up, and connects: not a round trip to measure.
    if echo.send(-1).get_result(block=True, timeout=60_000) != -1:
        raise RuntimeError("wrong echo")
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        if echo.send(1).get_result(block=True, timeout=30_000) != 1:
            raise RuntimeError("wrong echo")
        ms.append((time.perf_counter() - t0) * 1000)
    return {"ms": ms}


def main(argv: list[str]) -> int:
    if argv[:1] == ["enqueue"] and len(argv) in (3, 4):
        out = enqueue(argv[1], int(argv[2]), *argv[3:])
    elif argv[:1] == ["latency"] and len(argv) == 2:
        out = latency(int(argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

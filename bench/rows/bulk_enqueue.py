"""Row 4b: bulk enqueue for fan-outs, `calls.send_many` against `.delay()` in a loop."""

from __future__ import annotations

import statistics
import time

from bench.harness import Bench, BenchError, summary


def run(bench: Bench, n: int) -> None:
    """A fan-out of `n`: `calls.send_many` (outbox rows in bulk, pipelined publish) against
    stock Celery's `.delay()` in a loop, and ours in a loop. Enqueue only: no worker runs,
    and each message is checked to be on its queue."""
    import bench.stock as stock
    from common import calls
    from common.outbox.models import OutboxMessage
    from contracts import sync

    variants = {
        "send_many": ("sync", lambda: calls.send_many(sync.echo, [(i,) for i in range(n)])),
        "stock .delay() loop": ("stock", lambda: [stock.echo.delay(i) for i in range(n)]),
        "ours .delay() loop": ("sync", lambda: [sync.echo.delay(i) for i in range(n)]),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(bench.rounds):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            queue, send = variants[name]
            bench.redis.delete(queue)
            t0 = time.perf_counter()
            send()
            rates[name].append(n / (time.perf_counter() - t0))
            queued = bench.redis.llen(queue)
            if queued != n or OutboxMessage.objects.exists():
                raise BenchError(f"{name}: {queued} of {n} messages on {queue}, outbox not empty")
            bench.redis.delete(queue)
    ours, base = statistics.median(rates["send_many"]), statistics.median(rates["stock .delay() loop"])
    bench.rows.append(
        (
            f"bulk enqueue of {n}: send_many vs stock .delay() loop (tasks/s; ours in a loop: "
            f"{summary(rates['ours .delay() loop'])})",
            summary(rates["send_many"]),
            summary(rates["stock .delay() loop"]),
            f"{ours / base:.2f}",
            ">= 3",
        )
    )

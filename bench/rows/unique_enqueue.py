"""Row 4c: the cost of a unique task's enqueue, against a plain task's, both through `.delay()`."""

from __future__ import annotations

import statistics
import time

from bench.harness import Bench, BenchError, summary


def run(bench: Bench, n: int) -> None:
    """`n` sends of `sync.sync_doctor_to_external_system` (declared unique per doctor: the key
    taken in the publish's own Lua step) against `n` of `sync.validate_doctor` (same shape,
    not unique), each a `.delay()` in a loop, alternating over the rounds. Each doctor id once,
    so every unique send is queued (the full cost: check, key, publish); enqueue only, and
    each message is checked to be on its queue, every key taken."""
    from contracts import sync

    variants = {
        "unique": (sync.sync_doctor_to_external_system, n),
        "plain": (sync.validate_doctor, 0),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(bench.rounds):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            task, keys_expected = variants[name]
            _clear(bench)
            t0 = time.perf_counter()
            for i in range(n):
                task.delay(i)
            rates[name].append(n / (time.perf_counter() - t0))
            queued, keys = bench.redis.llen("sync"), _unique_keys(bench)
            if queued != n or len(keys) != keys_expected:
                raise BenchError(f"unique enqueue, {name}: {queued} of {n} messages queued, {len(keys)} keys held")
            _clear(bench)
    ratio = statistics.median(rates["unique"]) / statistics.median(rates["plain"])
    bench.rows.append(
        (
            f"unique enqueue of {n}: a unique task's .delay() vs a plain one's (tasks/s)",
            summary(rates["unique"]),
            summary(rates["plain"]),
            f"{ratio:.2f}",
            ">= 0.90",
        )
    )


def _unique_keys(bench: Bench) -> list[bytes]:
    return list(bench.redis.scan_iter(match="jobs.unique:sync.sync_doctor_to_external_system:*", count=1000))


def _clear(bench: Bench) -> None:
    bench.redis.delete("sync")
    keys = _unique_keys(bench)
    for start in range(0, len(keys), 500):
        bench.redis.delete(*keys[start : start + 500])

"""Row 4c: the cost of a unique task's enqueue, against a plain task's, both through `.delay()`."""

from __future__ import annotations

import statistics
import time

from bench.harness import Bench, BenchError, summary

CHUNK = 100  # sends timed at a time, the two variants taking turns (a loaded box drifts)


def run(bench: Bench, n: int) -> None:
    """`n` sends of `sync.sync_doctor_to_external_system` (declared unique per doctor: the key
    taken in the publish's own Lua step) against `n` of `sync.validate_doctor` (same shape,
    not unique), each `calls.apply_async` in a loop. The two take turns every CHUNK sends,
    so both see the same load. Each doctor id once, so every unique send is queued (the full
    cost: check, key, publish); enqueue only, and every message is checked to be on its
    queue, every key taken."""
    from common import calls
    from contracts import sync

    variants = {"unique": sync.sync_doctor_to_external_system, "plain": sync.validate_doctor}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for task in variants.values():  # warm: connections, the script loaded, contracts read
        for i in range(20):
            calls.apply_async(task, (i,))
    for r in range(bench.rounds):
        _clear(bench)
        spent = dict.fromkeys(variants, 0.0)
        for c, start in enumerate(range(0, n, CHUNK)):
            ids = range(start, min(start + CHUNK, n))
            for name in list(variants) if (r + c) % 2 == 0 else list(reversed(variants)):
                task = variants[name]
                t0 = time.perf_counter()
                for i in ids:
                    calls.apply_async(task, (i,))
                spent[name] += time.perf_counter() - t0
        for name in variants:
            rates[name].append(n / spent[name])
        queued, keys = bench.redis.llen("sync"), len(_unique_keys(bench))
        if queued != 2 * n or keys != n:
            raise BenchError(f"unique enqueue: {queued} of {2 * n} messages queued, {keys} of {n} keys held")
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

"""Row 7: what one no-op task costs Redis, the capacity model's inputs (docs/benchmark.md, Capacity)."""

from __future__ import annotations

from bench.harness import Bench, log


def run(bench: Bench, n: int) -> None:
    """One solo sync worker drains `n` no-op tasks through the bench's Redis; per task: the
    Redis commands, bytes in and out and Redis' own CPU (`INFO`, reset first), the stored
    message and result sizes, and the worker's rate (one core). docs/benchmark.md, Capacity."""
    from common.celery_app import current_app

    app, r = current_app(), bench.redis

    def snapshot() -> tuple[float, int, int, float]:
        stats, cpu = r.info("stats"), r.info("cpu")
        calls = sum(bench.commandstats().values())  # INFO, CONFIG and the bench's polling left out
        seconds = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        return calls, int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"]), seconds

    bench.reset_commandstats()
    before = snapshot()
    with app.producer_or_acquire() as producer, producer.batch():
        ids = [app.send_task("sync.echo", args=[i], producer=producer).id for i in range(n)]
    queued = snapshot()
    message = len(r.lindex("sync", 0) or b"")
    bench.own["lindex"] += 1
    rate, procs = bench.timed_drain(
        "capacity",
        app,
        "sync",
        [("sync.worker", "capacity", ["--pool=solo", "--prefetch-multiplier=4"])],
        ids,
    )
    for proc, _ in procs:
        proc.stop()
    drained = snapshot()
    result = int(r.strlen(f"celery-task-meta-{ids[0]}"))
    send = [(queued[k] - before[k]) / n for k in range(3)]
    run = [(drained[k] - queued[k]) / n for k in range(3)]
    cpu_ms = 1000 * (drained[3] - before[3]) / n
    bench.capacity_lines = [
        f"| Redis commands | {send[0] + run[0]:.1f} ({send[0]:.1f} to enqueue, {run[0]:.1f} to run) |",
        f"| Redis network | {(send[1] + run[1]) / 1024:.1f} KB in, "
        f"{(send[2] + run[2]) / 1024:.1f} KB out |",
        f"| Redis CPU | {cpu_ms:.3f} ms (its whole process, enqueue and run) |",
        f"| message / stored result | {message:,} B waiting / {result:,} B kept for `RESULT_EXPIRES` |",
        f"| worker | {rate:,.0f} no-op tasks/s for one solo process (one core) |",
    ]
    for line in bench.capacity_lines:
        log(f"  {line}")

"""Row 3b: recovery after SIGKILL, from the kill of the worker running a task to its start on
another worker; the workers are the fault suite's (devtools.testing.faults.NamedWorker)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.harness import Bench, BenchError, log, summary
from devtools.testing.faults import NamedWorker


def run(bench: Bench, crm: Any, with_stock: bool, task_s: float = 6.0, stock_wait_s: float = 200.0) -> None:
    """Seconds from SIGKILL of the worker running a task until a second worker starts it.

    The task is a CRM call made slow by the sandbox's latency (`task_s`), so it is surely
    in flight when its worker's process group is killed; a second worker is running.
    The sandbox's request log (a monotonic `at` per request) says when each delivery
    started. Ours comes back by heartbeats (BROKER_HEARTBEAT_TIMEOUT, default 10 s).
    Stock kombu comes back by message age: `visibility_timeout` 30 s (lower and a slow
    task runs twice), found by the sweep for unacked messages, which with kombu's
    defaults scans every `unacked_restore_interval` x `unacked_restore_throttle`
    (10 x 10 s) from the worker's start. The one stock round waits (up to
    `stock_wait_s`) while ours' rounds run: other queue, other keys.
    """
    pending = kill_stock(bench, crm, task_s, stock_wait_s) if with_stock else None
    times, refs, workers = ours_rounds(bench, crm, task_s)
    log(f"  ours: back after {', '.join(f'{t:.1f}' for t in times)} s")
    stock_s: float | None = None
    if pending is not None:
        stock_s = stock_back(bench, crm, pending, stock_wait_s, refs)
    for w in workers:
        w.terminate(timeout=20)
    crm.latency = 0.0
    # At least once, and no more: the killed delivery and one redelivery, one CRM record.
    for ref in refs:
        if len(starts(crm, ref)) != 2 or ref not in crm.doctors:
            raise BenchError(
                f"recovery: task {ref} started {len(starts(crm, ref))} times, not twice (kill + 1)"
            )
    add_row(bench, times, stock_s, with_stock, stock_wait_s)


def starts(crm: Any, ref: str) -> list[float]:
    """When each delivery of the task with CRM reference `ref` called the CRM sandbox."""
    return [
        r["at"] for r in crm.requests if isinstance(r["body"], dict) and r["body"].get("reference") == ref
    ]


def start_workers(
    bench: Bench, name: str, app: Any, ks: range, module: str = "", env: dict[str, str] | None = None
) -> list[NamedWorker]:
    """Sync workers (threads/4), or `module`'s, each answering ping."""
    args = ["--pool=threads", "--concurrency=4", "--loglevel=WARNING"]
    return [
        NamedWorker("sync", f"{name}-rec{k}", bench.data_dir, env, args=args, module=module).start(app)
        for k in ks
    ]


def kill_holder(
    bench: Bench, crm: Any, name: str, app: Any, workers: list[NamedWorker], result: Any, ref: str
) -> tuple[float, list[NamedWorker]]:
    """SIGKILL the worker running the task once it has started; when, and who is left."""
    deadline = time.monotonic() + 60
    while not starts(crm, ref):
        if time.monotonic() > deadline:
            raise BenchError(f"{name} recovery: the task did not start; see {bench.data_dir}")
        time.sleep(0.02)
    active = app.control.inspect(destination=[w.node for w in workers], timeout=2).active() or {}
    holders = [w for w in workers if any(t["id"] == result.id for t in active.get(w.node) or [])]
    if len(holders) != 1:
        raise BenchError(f"{name} recovery: {len(holders)} workers run the task, not 1: {active}")
    killed_at = time.monotonic()
    holders[0].kill()  # the worker and its pool: a lost host
    crm.latency = 0.0  # the killed call sleeps on; the redelivery need not
    if result.ready() or len(starts(crm, ref)) != 1:
        raise BenchError(f"{name} recovery: the task was not in flight when its worker was killed")
    return killed_at, [w for w in workers if w is not holders[0]]


def back_after(
    bench: Bench, crm: Any, name: str, ref: str, killed_at: float, survivors: list[NamedWorker], bound: float
) -> float | None:
    """Seconds from the kill to the second delivery's start; None if not back within `bound`."""
    while len(starts(crm, ref)) < 2:
        if not all(w.proc.running for w in survivors):
            raise BenchError(f"{name} recovery: the second worker died; see {bench.data_dir}")
        if time.monotonic() > killed_at + bound:
            return None
        time.sleep(0.05)
    return starts(crm, ref)[1] - killed_at


def kill_stock(bench: Bench, crm: Any, task_s: float, stock_wait_s: float) -> tuple[Any, ...]:
    """Stock's one round, up to the kill: its redelivery is awaited while ours' rounds run."""
    import bench.stock as stock

    stock.check_transport()
    workers = start_workers(
        bench, "stock", stock.app, range(2), "bench.stock", {"STOCK_VISIBILITY_TIMEOUT": "30"}
    )
    ref = "bench-stock-recovery"
    crm.latency = task_s
    result = stock.upsert.delay(f"{crm.url}/api/doctors", {"reference": ref, "email": "stock@bench.example"})
    killed_at, survivors = kill_holder(bench, crm, "stock", stock.app, workers, result, ref)
    log(f"  stock: worker killed; waiting for the redelivery (up to {stock_wait_s:.0f} s) meanwhile")
    return ref, result, killed_at, survivors


def ours_rounds(bench: Bench, crm: Any, task_s: float) -> tuple[list[float], list[str], list[NamedWorker]]:
    """One kill per round; the seconds until each task was back, their references, the workers left."""
    from common.celery_app import current_app
    from common.models import Doctor
    from contracts import sync

    app = current_app()
    times: list[float] = []
    refs: list[str] = []
    workers: list[NamedWorker] = []
    k = 0
    for _ in range(bench.rounds):
        # The survivor of the last round stays: one start per round after the first.
        new = range(k, k + 2 - len(workers))
        workers += start_workers(bench, "ours", app, new)
        k = new.stop
        doctor = Doctor.objects.create(first_name="B", last_name="Recovery", email=f"rec{k}@bench.example")
        ref = str(doctor.pk)
        crm.latency = task_s
        result = sync.sync_doctor_to_external_system.delay(doctor.pk)
        killed_at, workers = kill_holder(bench, crm, "ours", app, workers, result, ref)
        back = back_after(bench, crm, "ours", ref, killed_at, workers, bound=120)
        if back is None:
            raise BenchError(
                f"ours recovery: the task was not back 120 s after SIGKILL; see {bench.data_dir}"
            )
        times.append(back)
        refs.append(ref)
        if result.get(timeout=60)["status"] != "synced":
            raise BenchError("ours recovery: the redelivered task did not sync")
        bench.check_transport("ours recovery", [w.proc for w in workers], ours=True)
    return times, refs, workers


def stock_back(
    bench: Bench, crm: Any, pending: tuple[Any, ...], stock_wait_s: float, refs: list[str]
) -> float | None:
    """Stock's redelivery awaited (up to `stock_wait_s` from its kill), its workers stopped."""
    ref, result, killed_at, survivors = pending
    stock_s = back_after(bench, crm, "stock", ref, killed_at, survivors, bound=stock_wait_s)
    if stock_s is None:
        log(f"  stock: not back {stock_wait_s:.0f} s after SIGKILL")
        for key in ("unacked", "unacked_index", "unacked_mutex"):
            bench.redis.delete(key)  # the killed worker's message: no later step may see it
    else:
        log(f"  stock: back after {stock_s:.1f} s")
        if result.get(timeout=60) != 201:
            raise BenchError("stock recovery: the redelivered task failed")
        refs.append(ref)
    bench.check_transport("stock recovery", [w.proc for w in survivors], ours=False)
    for w in survivors:
        w.terminate(timeout=20)
    return stock_s


def add_row(
    bench: Bench, times: list[float], stock_s: float | None, with_stock: bool, stock_wait_s: float
) -> None:
    ours = statistics.median(times)
    if stock_s is not None:
        base, ratio = f"{stock_s:.1f}", f"{ours / stock_s:.2f} (stock {stock_s / ours:.1f}x)"
    else:
        base, ratio = (f"> {stock_wait_s:.0f}", f"< {ours / stock_wait_s:.2f}") if with_stock else ("-", "-")
    bench.rows.append(
        (
            f"recovery after SIGKILL, kill to restart elsewhere (s, ours n={len(times)}; "
            "stock: visibility_timeout 30 s, default sweeps, n=1)",
            summary(times),
            base,
            ratio,
            "<= 1 (ours <= 15 s)",
        )
    )

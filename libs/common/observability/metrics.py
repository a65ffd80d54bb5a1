"""Prometheus metrics of a worker: what its tasks did, and what waits in Redis for it.

With METRICS_PORT set, a worker run calls `serve_metrics` before the worker starts (a hook in
`common.process_hooks`): the worker's main process serves `http://<METRICS_ADDRESS>:<METRICS_PORT>/metrics`.

Task counts come from Celery's signals, which fire where the task runs: in the main process
for the threads and solo pools, in the pool's child processes for prefork. Counting only
in the main process would need Celery's internals (the parent learns a child's outcome in
`Request.on_success`, no signal), so every worker runs prometheus_client's multiprocess
mode, one code path for every pool: each process writes its values to a memory-mapped file
under `<DATA_DIR>/metrics/<service>-<pid of the main process>/`, and a scrape sums the
files (a prefork child's counts survive its replacement). The directory is the main
process's own, wiped when it starts and removed when it exits; directories whose main
process is gone are removed by the next worker that starts there.

What waits in Redis is read on a scrape (`common.observability.queues`, one round trip, at
most once a second however often /metrics is asked):
nothing to keep in step, never stale. Each worker reports its own queue; the monitor
service (Flower's /metrics) reports every queue, so a queue nobody consumes is still seen.

    celery_task_received_total{service,task}          messages the worker accepted
    celery_task_succeeded_total{service,task}
    celery_task_failed_total{service,task,exception}  failed for good (a retry is no failure)
    celery_task_retried_total{service,task}
    celery_task_rejected_total{service,task}          ended in a business outcome (a declined
                                                      card: the task's `throws`), not a failure
    celery_task_runtime_seconds{service,task}         histogram, every run whatever its outcome
    celery_task_last_success_timestamp_seconds{service,task}  for "periodic job missed"
    celery_dead_lettered_total{queue,reason}          messages dead-lettered by this worker
    celery_redelivered_total{service}                 messages this worker put back on their
                                                      queues after their worker process died
    celery_worker_info{service,release,pool}          1 while the worker runs
    celery_worker_last_heartbeat_timestamp_seconds{service}  the broker took its heartbeat
    celery_queue_length{queue}                        messages waiting, every priority
    celery_queue_oldest_age_seconds{queue}            how long the oldest waiting message has
                                                      been runnable (0 when empty)
    celery_queue_consumers{queue}                     worker processes consuming it, alive
    celery_dead_letters{queue}                        dead letters kept (common.deadletters)
    celery_queue_paused{queue}                        1 while paused (no worker starts its tasks)
    celery_queue_paused_seconds{queue}                how long it has been paused (0 while it runs)
    celery_delayed_tasks                              countdown/eta messages not yet due (all queues)
    celery_broker_up                                  1 if the scrape could read Redis, else 0

Every worker of a service reports the same queue: aggregate them with max(), not sum().
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from celery import Celery, signals

from common.observability.outcomes import is_outcome
from common.observability.queues import BrokerSnapshot, read_broker
from common.settings import Settings, get_settings
from common.transport.broker.ownership import current_owner
from common.transport.dead_letter_store import dead_lettered
from common.transport.tls import redis_from_url

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class TaskMetrics:
    """The task counters and runtime histogram, fed by Celery's signals."""

    def __init__(self, service: str) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.service = service
        labels = ("service", "task")
        # registry=None: only the endpoint's multiprocess collector reads them.
        self.received = Counter(
            "celery_task_received_total", "Task messages this worker accepted.", labels, registry=None
        )
        self.succeeded = Counter("celery_task_succeeded_total", "Tasks that returned.", labels, registry=None)
        self.failed = Counter(
            "celery_task_failed_total",
            "Tasks that failed for good (retries exhausted, or an error not retried).",
            (*labels, "exception"),
            registry=None,
        )
        self.retried = Counter(
            "celery_task_retried_total", "Task runs that ended in a retry.", labels, registry=None
        )
        self.rejected = Counter(
            "celery_task_rejected_total",
            "Task runs ended in a business outcome (a declined card: the task's throws), not a failure.",
            labels,
            registry=None,
        )
        self.last_success = Gauge(
            "celery_task_last_success_timestamp_seconds",
            "Unix time of the task's last success (a periodic job that stops succeeding ages).",
            labels,
            registry=None,
            multiprocess_mode="max",
        )
        self.dead_lettered = Counter(
            "celery_dead_lettered_total",
            "Messages this worker dead-lettered, by queue and reason (common.deadletters).",
            ("queue", "reason"),
            registry=None,
        )
        self.runtime = Histogram(
            "celery_task_runtime_seconds",
            "Seconds each task run took, whatever its outcome.",
            labels,
            buckets=RUNTIME_BUCKETS,
            registry=None,
        )
        self._started: dict[str, float] = {}

    def declare(self, task_names: Iterable[str]) -> None:
        """Export 0 for each task before it first runs: rate() and alerts see a series at once."""
        for name in task_names:
            for metric in (self.received, self.succeeded, self.retried, self.rejected, self.runtime):
                metric.labels(self.service, name)

    def connect(self) -> None:
        for signal, receiver in (
            (signals.task_received, self._on_received),
            (signals.task_prerun, self._on_prerun),
            (signals.task_postrun, self._on_postrun),
            (signals.task_success, self._on_success),
            (signals.task_failure, self._on_failure),
            (signals.task_retry, self._on_retry),
            (dead_lettered, self._on_dead_lettered),
        ):
            signal.connect(receiver, weak=False, dispatch_uid=f"common.metrics.{cast(Any, signal).name}")

    def disconnect(self) -> None:
        for signal in (
            signals.task_received, signals.task_prerun, signals.task_postrun,
            signals.task_success, signals.task_failure, signals.task_retry, dead_lettered,
        ):  # fmt: skip
            signal.disconnect(dispatch_uid=f"common.metrics.{cast(Any, signal).name}")

    # The receivers never raise: a metric must not change what happens to a task.
    def _on_received(self, request: Any = None, **_: Any) -> None:
        _safely(lambda: self.received.labels(self.service, _name(request)).inc())

    def _on_prerun(self, task_id: str | None = None, **_: Any) -> None:
        if task_id is not None:
            self._started[task_id] = time.perf_counter()

    def _on_postrun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        started = self._started.pop(task_id, None) if task_id is not None else None
        if started is not None:
            took = time.perf_counter() - started
            _safely(lambda: self.runtime.labels(self.service, _name(task)).observe(took))

    def _on_success(self, sender: Any = None, **_: Any) -> None:
        def update() -> None:
            self.succeeded.labels(self.service, _name(sender)).inc()
            self.last_success.labels(self.service, _name(sender)).set(time.time())

        _safely(update)

    def _on_failure(self, sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
        if is_outcome(sender, exception):
            _safely(lambda: self.rejected.labels(self.service, _name(sender)).inc())
            return
        kind = type(exception).__name__ if exception is not None else "unknown"
        _safely(lambda: self.failed.labels(self.service, _name(sender), kind).inc())

    def _on_retry(self, sender: Any = None, **_: Any) -> None:
        _safely(lambda: self.retried.labels(self.service, _name(sender)).inc())

    def _on_dead_lettered(self, sender: Any = None, queue: str = "", reason: str = "", **_: Any) -> None:
        _safely(lambda: self.dead_lettered.labels(queue, reason).inc())


def _name(task_or_request: Any) -> str:
    return str(getattr(task_or_request, "name", None) or "unknown")


def _safely(update: Callable[[], None]) -> None:
    try:
        update()
    except Exception:  # noqa: BLE001 - counted or not, the task goes on
        logger.debug("metric update failed", exc_info=True)


class RedisCollector:
    """Reads what waits in Redis for `queues` (one pipelined round trip), at most once per
    `min_interval` seconds whatever the scrape rate: /metrics has no login, and a flood of
    requests made as many round trips to the broker's Redis."""

    def __init__(self, queues: Sequence[str], client: Callable[[], Any], min_interval: float = 1.0) -> None:
        self.queues = list(queues)
        self.client = client
        self.min_interval = min_interval
        self.reads = 0
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._last: BrokerSnapshot | Exception | None = None

    def _read(self) -> BrokerSnapshot | Exception:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._read_at >= self.min_interval:
                self._read_at, self.reads = now, self.reads + 1
                try:
                    self._last = read_broker(self.client(), self.queues)
                except Exception as exc:  # noqa: BLE001 - Redis down: reported as celery_broker_up 0
                    logger.warning("metrics: could not read queue lengths from Redis", exc_info=True)
                    self._last = exc
            return self._last

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("celery_broker_up", "1 if this scrape could read the broker's Redis.")
        broker = self._read()
        if isinstance(broker, Exception):  # keep serving the task counts
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        families = {
            "length": GaugeMetricFamily(
                "celery_queue_length", "Messages waiting in the queue (every priority).", labels=["queue"]
            ),
            "oldest_age": GaugeMetricFamily(
                "celery_queue_oldest_age_seconds",
                "Seconds the oldest waiting message has been runnable (0 when the queue is empty).",
                labels=["queue"],
            ),
            "consumers": GaugeMetricFamily(
                "celery_queue_consumers", "Worker processes consuming the queue, alive.", labels=["queue"]
            ),
            "dead_letters": GaugeMetricFamily(
                "celery_dead_letters",
                "Dead letters kept for the queue (common.deadletters).",
                labels=["queue"],
            ),
        }
        for q in broker.queues:
            for field, family in families.items():
                family.add_metric([q.queue], float(getattr(q, field) or 0))
        yield from families.values()
        paused = GaugeMetricFamily(
            "celery_queue_paused",
            "1 while the queue is paused: no worker starts its tasks (common.transport.broker.pause).",
            labels=["queue"],
        )
        paused_for = GaugeMetricFamily(
            "celery_queue_paused_seconds",
            "Seconds the queue has been paused (0 while it runs).",
            labels=["queue"],
        )
        for q in broker.queues:
            paused.add_metric([q.queue], 1.0 if q.paused is not None else 0.0)
            paused_for.add_metric([q.queue], q.paused_seconds(broker.now))
        yield paused
        yield paused_for
        delayed = GaugeMetricFamily(
            "celery_delayed_tasks", "Messages with a countdown or eta not yet due, all queues."
        )
        delayed.add_metric([], broker.delayed)
        yield delayed


class WorkerCollector:
    """This worker's own process: its release, its heartbeat, what it redelivered."""

    def __init__(self, service: str, release: str, pool: str) -> None:
        self.service, self.release, self.pool = service, release, pool

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        info = GaugeMetricFamily(
            "celery_worker_info", "1 while the worker runs.", labels=["service", "release", "pool"]
        )
        info.add_metric([self.service, self.release, self.pool], 1)
        yield info
        owner = current_owner()
        redelivered = CounterMetricFamily(
            "celery_redelivered_total",
            "Messages this worker put back on their queues after their worker process died.",
            labels=["service"],
        )
        redelivered.add_metric([self.service], owner.recovered if owner else 0)
        yield redelivered
        if owner is not None and owner.last_tick is not None:
            beat = GaugeMetricFamily(
                "celery_worker_last_heartbeat_timestamp_seconds",
                "Unix time the broker last took this worker's heartbeat.",
                labels=["service"],
            )
            beat.add_metric([self.service], owner.last_tick)
            yield beat


def broker_collector(queues: Sequence[str], settings: Settings | None = None) -> RedisCollector:
    """A collector of `queues`' figures with its own lazily made Redis client."""
    s = settings or get_settings()
    client: list[Any] = []

    def redis() -> Any:
        if not client:
            timeout = s.broker_socket_timeout
            client.append(redis_from_url(s.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout))
        return client[0]

    return RedisCollector(queues, redis)


def metrics_dir(settings: Settings, service: str, pid: int | None = None) -> Path:
    return settings.data_dir / "metrics" / f"{service}-{pid or os.getpid()}"


def _remove_orphans(parent: Path) -> None:
    """Remove the directories of main processes that are gone (killed: no exit hook ran)."""
    for path in parent.glob("*-*"):
        pid = path.name.rpartition("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # alive, someone else's


def _use_multiprocess_mode(path: Path) -> None:
    """Every metric created from now on, in this process and its forks, writes under `path`."""
    from prometheus_client import values

    os.environ[MULTIPROC_ENV] = str(path)  # read by each value when it opens its file
    # prometheus_client picks its value class when first imported, from that variable: it may
    # have been imported before it was set, so pick again (a fresh class: no file of another
    # directory kept open).
    values.ValueClass = values.MultiProcessValue()


_serving: MetricsServer | None = None  # this process's endpoint, while it serves


class MetricsServer:
    """The running endpoint: its port, and `close()` (tests; a worker's exit does it anyway)."""

    def __init__(self, server: Any, thread: Any, path: Path, tasks: TaskMetrics) -> None:
        self.server, self.thread, self.path, self.tasks = server, thread, path, tasks
        self._pid = os.getpid()

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        global _serving
        if os.getpid() != self._pid:
            return  # a forked pool child inherits the hook: the directory is its parent's
        if _serving is self:
            _serving = None
        self.tasks.disconnect()
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.path, ignore_errors=True)


def serve_metrics(
    app: Celery, settings: Settings | None = None, *, pool: str = "unknown"
) -> MetricsServer | None:
    """Start counting `app`'s tasks and serve /metrics on METRICS_PORT; None if it is unset.

    Call it in the worker's main process before the pool starts (its children inherit the
    signal receivers). A port in use raises OSError: the worker then fails at start, loudly.
    Idempotent: while this process serves, a second call returns the running endpoint.
    """
    global _serving
    s = settings or get_settings()
    if s.metrics_port is None:
        return None
    if _serving is not None and _serving._pid == os.getpid():
        return _serving
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    service = app.main
    path = metrics_dir(s, service)
    _remove_orphans(path.parent)
    shutil.rmtree(path, ignore_errors=True)  # a previous process of this pid: not ours to sum
    path.mkdir(parents=True)
    _use_multiprocess_mode(path)

    tasks = TaskMetrics(service)
    tasks.connect()

    def declare(**_: Any) -> None:  # the worker has imported its tasks, its pool not yet forked
        tasks.declare(name for name in app.tasks if not name.startswith("celery."))

    signals.worker_init.connect(declare, weak=False, dispatch_uid="common.metrics.declare")

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    registry.register(broker_collector([service], s))
    registry.register(WorkerCollector(service, s.release_for(service), pool))
    server, thread = start_http_server(s.metrics_port, addr=s.metrics_address, registry=registry)
    running = _serving = MetricsServer(server, thread, path, tasks)
    atexit.register(running.close)
    logger.info("metrics: serving http://%s:%s/metrics", s.metrics_address, running.port)
    return running

"""Celery settings produced from the one `Settings`: Celery's documented values, made safe."""

from __future__ import annotations

from typing import Any

from kombu import Queue

from common.routing import SERVICES
from common.sentinel_urls import is_sentinel_url, parse_sentinel_url, sentinel_kwargs
from common.settings import Settings
from common.transport import unique_jobs
from common.transport.broker import transport as broker
from common.transport.results import BACKEND as RESULTS_BACKEND
from common.transport.results import SENTINEL_BACKEND
from common.transport.tls import split_tls


def celery_config(s: Settings, *, worker: bool = False) -> dict[str, Any]:
    """The Celery config; `worker` adds the receipt checks a consuming service applies."""
    # redis:// and rediss:// URLs select our reliable transport (common.transport.broker), TLS intact.
    broker.install()
    # A contract's `unique` declaration, applied on every publish and released by the worker.
    unique_jobs.install()
    # rediss://: the certificate verified by the broker, the result backend and the locks alike,
    # with the CA/cert/key the URL names (common.transport.tls); kombu alone would not verify.
    broker_url, broker_tls = split_tls(s.redis_url)
    results_url, results_tls = split_tls(s.results_url)
    # sentinel://: the same transport and backend, on whichever node the sentinels call primary.
    broker_sentinel, results_sentinel = _sentinel_options(s, s.redis_url), _sentinel_options(s, s.results_url)
    if broker_sentinel:
        broker_url = parse_sentinel_url(s.redis_url).kombu_url()
    results_backend = RESULTS_BACKEND
    if results_sentinel:
        results_url, results_backend = parse_sentinel_url(s.results_url).kombu_url(), SENTINEL_BACKEND
    return {
        "broker_url": broker_url,
        "broker_use_ssl": broker_tls,
        # Celery's Redis backend, storing each result in one atomic round trip (common.transport.results).
        "result_backend": f"{results_backend}+{results_url}",
        "redis_backend_use_ssl": results_tls,
        # JSON only: a pickle payload from the broker would be code execution.
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "timezone": "UTC",
        "enable_utc": True,
        "task_acks_late": True,
        "worker_prefetch_multiplier": s.worker_prefetch_multiplier,
        "task_reject_on_worker_lost": True,
        "task_soft_time_limit": s.task_soft_time_limit,
        "task_time_limit": s.task_time_limit,
        "result_expires": s.result_expires,
        # One routing rule: `<service>.<task>` to the queue `<service>` (common.routing).
        "task_routes": ("common.routing.route",),
        "task_queues": [Queue(name, routing_key=name) for name in SERVICES],
        "broker_transport_options": _broker_transport_options(s, worker, broker_sentinel),
        "broker_connection_retry_on_startup": True,
        # A worker that cannot reconnect gives up after this many attempts and exits non-zero
        # (common.worker) for its supervisor to restart it; None retries forever.
        "broker_connection_max_retries": s.broker_connection_max_retries,
        "broker_connection_timeout": 4,
        # One reconnect, then give up: every attempt at a hung Redis costs a socket timeout,
        # and the outbox keeps what could not be sent (common.calls).
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        # A worker keeps retrying a result write through a Redis restart or a half-open
        # connection (the result is owed: each attempt on a dead connection costs a socket
        # timeout, the reconnect another); a producer's subscription to its task's result gives
        # up at once, so a send to a hung Redis fails within seconds and the outbox keeps the task.
        "result_backend_transport_options": {
            "retry_policy": {"timeout": 30.0}
            if worker
            else {"max_retries": 0, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
            **results_sentinel,
        },
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": s.broker_socket_timeout,
        # Running tasks keep going through a lost connection: their messages stay owned by
        # this live worker (no redelivery to race them), and their acks are retried.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # STARTED is stored only for tasks that declare `track_started` (payments, reports):
        # each store is a read and a write on the backend, a third of a short task's cost.
        "task_track_started": False,
        # Results record the task name and the worker that ran it; never the arguments
        # (common.transport.results strips them: they may carry names and emails).
        "result_extended": True,
        # Task events cost every task a publish; Flower switches them on while it watches
        # (`enable_events`), so they are off by default and "task-sent" is not sent at all.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }



def _broker_transport_options(s: Settings, worker: bool, sentinel: dict[str, Any]) -> dict[str, Any]:
    """Our transport's options (common.transport.broker): ownership, bounds, dead letters."""
    return {
        # In-flight messages are owned by heartbeating workers: a dead worker's come
        # back after this many seconds without a heartbeat (common.transport.broker.ownership).
        "heartbeat_timeout": s.broker_heartbeat_timeout,
        # Every command bounded: a hung Redis fails a publish in seconds, not forever.
        "socket_timeout": s.broker_socket_timeout,
        "socket_connect_timeout": s.broker_socket_timeout,
        # A peer that went away silently is found by the kernel within ~25 s (the transport's
        # keepalive probes); a half-open connection by the checks below within seconds.
        "socket_keepalive": True,
        # A half-open connection (a NAT or load balancer that dropped its state): the
        # pidbox's pub/sub connection is pinged this often and dropped after two missed
        # pongs, and redis-py pings a connection idle this long before using it. The
        # task BRPOP has its own deadline (common.transport.broker, `_drop_overdue_brpop`).
        "health_check_interval": s.broker_socket_timeout,
        "retry_on_timeout": False,
        "max_payload_bytes": s.task_max_payload_bytes,
        "dead_letter_cap": s.dead_letter_cap,
        "dead_letter_retention": s.dead_letter_retention,
        "max_requeues": s.task_max_requeues,
        "dead_letter_max_bytes": s.dead_letter_max_bytes,
        **({"intake": "common.transport.intake"} if worker else {}),
        # Honour every priority 0 (first) .. 9 (last), not kombu's 4 buckets.
        "priority_steps": list(range(10)),
        "queue_order_strategy": "priority",
        **sentinel,
    }

def _sentinel_options(s: Settings, url: str) -> dict[str, Any]:
    """Transport options naming the primary and how to ask the sentinels (none for redis://)."""
    if not is_sentinel_url(url):
        return {}
    password = s.redis_sentinel_password.get_secret_value() if s.redis_sentinel_password else None
    return {
        "master_name": s.redis_sentinel_master,
        "sentinel_kwargs": sentinel_kwargs(password, s.broker_socket_timeout),
    }

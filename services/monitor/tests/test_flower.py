"""Flower: behind basic auth from settings, showing the workers of all four queues."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.routing import SERVICES
from devtools.ports import free_port
from devtools.processes import ServiceProcess, child_env
from devtools.testing.workers import Workers

PASSWORD = "s3cret-flower-pw"


def get(
    url: str, auth: tuple[str, str] | None = None, *, method: str = "GET", body: bytes | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def flower(data_dir: Path) -> Iterator[str]:
    workers = Workers(data_dir)
    workers.start(SERVICES)
    port = free_port()
    proc = ServiceProcess(
        "flower",
        "monitor.flower",
        env={
            "FLOWER_PASSWORD": PASSWORD,
            "FLOWER_USER": "ops",
            "FLOWER_PORT": str(port),
            "DJANGO_SETTINGS_MODULE": "common.django_settings",
        },
        log=data_dir / "flower.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while get_or_none(url) is None:
            assert proc.running, (data_dir / "flower.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.3)
        yield url
    finally:
        proc.stop()
        workers.stop()


def get_or_none(url: str) -> int | None:
    try:
        return get(url)[0]
    except OSError:
        return None


def test_unauthenticated_requests_are_refused(flower: str) -> None:
    for path in ("/", "/api/workers", "/tasks", "/api/tasks"):
        assert get(flower + path)[0] == 401
    assert get(flower + "/api/workers", ("ops", "wrong"))[0] == 401


def test_metrics_and_healthcheck_need_the_password(flower: str) -> None:
    """Flower 2 serves both to anyone: the metrics name every worker, queue and task type."""
    for path in ("/metrics", "/healthcheck"):
        assert get(flower + path)[0] == 401, path
        assert get(flower + path, ("ops", "wrong"))[0] == 401, path
        status, body = get(flower + path, ("ops", PASSWORD))
        assert status == 200, path
    assert b"flower_" in get(flower + "/metrics", ("ops", PASSWORD))[1]


def test_sending_tasks_through_flower_is_refused(flower: str, data_dir: Path) -> None:
    """Flower's API would publish any task, with any arguments, past every contract check."""
    body = json.dumps({"args": [424242]}).encode()
    for verb in ("async-apply", "send-task", "apply"):
        path = f"/api/task/{verb}/sync.echo"
        assert get(flower + path, method="POST", body=body)[0] == 401, path
        status, answer = get(flower + path, ("ops", PASSWORD), method="POST", body=body)
        assert status == 403, (path, status, answer)
        assert b"task-id" not in answer
    time.sleep(1)
    assert "424242" not in (data_dir / "sync-worker.log").read_text()


def test_stopping_or_reshaping_workers_through_flower_is_refused(flower: str) -> None:
    status, body = get(flower + "/api/workers?refresh=1", ("ops", PASSWORD))
    node = next(name for name in json.loads(body) if name.startswith("sync@"))
    for path in (
        f"/api/worker/shutdown/{node}",
        f"/api/worker/pool/restart/{node}",
        f"/api/worker/pool/shrink/{node}",
        f"/api/worker/pool/autoscale/{node}?min=1&max=1",
        f"/api/worker/queue/cancel-consumer/{node}?queue=sync",
        "/api/task/rate-limit/sync.echo?workername=" + node + "&ratelimit=1/h",
    ):
        status, answer = get(flower + path, ("ops", PASSWORD), method="POST", body=b"")
        assert status == 403, (path, status, answer)
    time.sleep(2)
    from common.celery_app import current_app

    assert node in (current_app().control.inspect(destination=[node], timeout=5).ping() or {})


def test_authenticated_request_lists_the_running_workers_of_every_queue(flower: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        status, body = get(flower + "/api/workers?refresh=1", ("ops", PASSWORD))
        assert status == 200
        names = {name.split("@")[0] for name in json.loads(body)}
        if set(SERVICES) <= names or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(SERVICES) <= names


def test_flower_refuses_to_start_without_a_password(data_dir: Path) -> None:
    env = child_env({"DJANGO_SETTINGS_MODULE": "common.django_settings"})
    env.pop("FLOWER_PASSWORD", None)
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.flower"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "FLOWER_PASSWORD: must be set" in proc.stderr


def test_flower_sees_tasks_although_workers_do_not_send_events_by_default(flower: str) -> None:
    """Task events cost every worker CPU, so they are off until a monitor asks for them.

    Flower asks (`enable_events`) when it starts and every few seconds after; a task run
    while it watches must show up with its final state.
    """
    from contracts import sync

    def state_in_flower(task_id: str) -> str | None:
        status, body = get(flower + "/api/tasks?limit=1000", ("ops", PASSWORD))
        assert status == 200
        return json.loads(body).get(task_id, {}).get("state")

    # The first tasks may run before Flower's enable_events reached the worker: keep going.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        result = sync.echo.delay(7)
        assert result.get(timeout=30) == 7
        for _ in range(30):
            if state_in_flower(result.id) == "SUCCESS":
                return
            time.sleep(0.1)
    pytest.fail("Flower never saw a task: are worker events enabled when it asks?")


def test_flower_reports_every_service_queue_length_and_its_metrics(flower: str) -> None:
    """Flower picks its broker client from the broker URL's scheme: it must stay redis://."""
    from common.celery_app import current_app
    from devtools.testing.prometheus import scrape, total

    status, body = get(flower + "/api/queues/length", ("ops", PASSWORD))
    assert status == 200, body[:300]
    lengths = {q["name"]: q["messages"] for q in json.loads(body)["active_queues"]}
    assert set(SERVICES) <= set(lengths), lengths
    assert all(isinstance(lengths[q], int) and lengths[q] >= 0 for q in SERVICES)
    stats = current_app().control.inspect(timeout=5).stats() or {}
    assert stats and {s["broker"]["transport"] for s in stats.values()} == {"redis"}

    # Flower's /metrics also carries every queue's figures, consumers included.
    samples = scrape(flower + "/metrics", ("ops", PASSWORD))
    assert total(samples, "celery_broker_up") == 1
    for queue in SERVICES:
        assert ("celery_queue_length", frozenset({("queue", queue)})) in samples
        assert total(samples, "celery_queue_consumers", queue=queue) >= 1, queue

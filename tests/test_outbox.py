"""The outbox with real processes: workers, the relay (`web.manage relay_outbox`), Redis stopped.

What is measured: a task sent while Redis is down is kept and run once Redis and the relay
are back; a rolled-back transaction sends nothing and a committed one runs once; a relay
killed between publish and delete republishes the same task id, which still runs once; the
the platform's fan-outs work inside a transaction and lose nothing while the broker is down.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.db import connection, transaction
from django.utils import timezone

from common import calls
from common.celery_config import celery_config
from common.models import Appointment, Doctor, Patient
from common.outbox.models import OutboxMessage
from common.settings import load_settings
from contracts import sync
from devtools.local_redis import LocalRedis
from devtools.ports import free_port
from devtools.processes import ServiceProcess, child_env, wait_for_workers
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers

BACKEND = {"DJANGO_SETTINGS_MODULE": "common.django_settings"}


def app_for(url: str) -> Celery:
    app = Celery("outbox-e2e")
    app.conf.update(celery_config(load_settings(redis_url=url)))
    return app


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture(autouse=True)
def empty_outbox() -> None:
    OutboxMessage.objects.all().delete()


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    try:
        w.start(["sync", "emails"], env={"sync": peers_env, "emails": peers_env})
        yield w
    finally:
        w.stop()


def relay_process(data_dir: Path, redis_url: str, *args: str) -> ServiceProcess:
    """`web.pex relay_outbox`, as deployed: the web deployable's manage.py."""
    return ServiceProcess(
        "outbox-relay",
        "web.manage",
        ["relay_outbox", *args],
        env={"REDIS_URL": redis_url},
        log=data_dir / "outbox-relay.log",
    )


def worker_on(redis_url: str, data_dir: Path, log_name: str) -> ServiceProcess:
    return ServiceProcess(
        "sync",
        "sync.worker",
        ["--without-mingle", "--without-gossip"],
        env={**BACKEND, "REDIS_URL": redis_url},
        log=data_dir / log_name,
    ).start()


def wait_for_worker(app: Celery, worker: ServiceProcess, log: Path) -> None:
    try:
        wait_for_workers(app, ["sync"], timeout=120)
    except TimeoutError as exc:
        tail = "\n".join(log.read_text().splitlines()[-40:]) if log.exists() else "(no log)"
        raise AssertionError(f"{exc}; worker running={worker.running}\n{tail}") from None


def runs_of(task_id: str, log: Path) -> int:
    """How often a worker logged the task as succeeded (Celery logs each run at INFO)."""
    return len(re.findall(rf"\[{re.escape(task_id)}\] succeeded", log.read_text()))


def queued_messages(client: redis.Redis, queue: str) -> list[dict]:
    """Messages waiting on `queue` (every priority list), oldest first."""
    keys = [k for k in client.keys(f"{queue}*") if k.decode().split("\x06\x16")[0] == queue]
    return [json.loads(raw) for key in keys for raw in reversed(client.lrange(key, 0, -1))]


def test_redis_down_at_send_the_relay_runs_the_task_once_redis_is_back(data_dir: Path) -> None:
    redis_server = LocalRedis().start()
    app = app_for(redis_server.url)
    redis_server.stop()
    started = time.monotonic()
    result = calls.apply_async("sync.echo", (41,), app=app)
    print(f"send with Redis down returned in {time.monotonic() - started:.2f} s")
    assert OutboxMessage.objects.filter(task_id=result.id).exists()

    redis_server = LocalRedis(port=redis_server.port).start()
    log = data_dir / "outbox-down-worker.log"
    worker = worker_on(redis_server.url, data_dir, log.name)
    relay = relay_process(data_dir, redis_server.url, "--interval", "0.2").start()
    try:
        wait_for_worker(app, worker, log)
        back = time.monotonic()
        assert result.get(timeout=60) == 41
        print(f"kept task ran {time.monotonic() - back:.2f} s after worker and relay were up")
        assert not OutboxMessage.objects.exists()
        time.sleep(1)
        assert runs_of(result.id, log) == 1
        assert relay.stop(timeout=10) == 0, "TERM stops the relay cleanly"
    finally:
        relay.stop()
        worker.stop()
        redis_server.stop()


def test_a_rolled_back_transaction_sends_nothing_and_a_committed_one_runs_once(
    workers: Workers, data_dir: Path
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled_back = sync.echo.delay(1)
        raise RuntimeError("the caller's work failed")
    with transaction.atomic():
        committed = sync.echo.delay(2)
    assert committed.get(timeout=30) == 2
    time.sleep(1)
    log = data_dir / "sync-worker.log"
    assert runs_of(committed.id, log) == 1
    assert rolled_back.id not in log.read_text() and rolled_back.state == "PENDING"
    assert not OutboxMessage.objects.exists()


@contextmanager
def deletes_blocked() -> Iterator[None]:
    """Let other connections read and lock outbox rows, but not delete them, while held."""
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            # SHARE conflicts with DELETE's ROW EXCLUSIVE, not with FOR UPDATE's ROW SHARE.
            cursor.execute("LOCK TABLE outbox_outboxmessage IN SHARE MODE")
            yield
        return
    holder = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock: readers go on, writers wait
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


@pytest.fixture(scope="module")
def crashed_relay(data_dir: Path) -> Iterator[tuple[LocalRedis, str]]:
    """A relay SIGKILLed after publishing a row and before deleting it, then run again.

    Yields this scenario's Redis (no worker on it yet) and the task id.
    """
    OutboxMessage.objects.all().delete()
    redis_server = LocalRedis().start()
    try:
        task_id = calls.apply_async("sync.echo", (99,), app=app_for(dead_url())).id
        client = redis.Redis.from_url(redis_server.url)
        relay = relay_process(data_dir, redis_server.url, "--interval", "0.2")
        with deletes_blocked():
            relay.start()
            wait_until(lambda: queued_messages(client, "sync"), timeout=60)
            assert relay.proc is not None
            os.killpg(relay.proc.pid, signal.SIGKILL)
            relay.proc.wait(10)
        assert OutboxMessage.objects.filter(task_id=task_id).exists(), "the crash left the row"
        again = relay_process(data_dir, redis_server.url, "--once").start()
        assert again.proc is not None and again.proc.wait(60) == 0
        yield redis_server, task_id
    finally:
        redis_server.stop()


def test_a_relay_killed_before_deleting_republishes_the_same_task_id(
    crashed_relay: tuple[LocalRedis, str],
) -> None:
    redis_server, task_id = crashed_relay
    messages = queued_messages(redis.Redis.from_url(redis_server.url), "sync")
    assert [m["headers"]["id"] for m in messages] == [task_id, task_id]
    assert all(m["headers"]["x_outbox"] is True for m in messages)
    assert not OutboxMessage.objects.filter(task_id=task_id).exists()


def test_the_republished_copy_runs_once_in_effect(
    crashed_relay: tuple[LocalRedis, str], data_dir: Path
) -> None:
    redis_server, task_id = crashed_relay
    app = app_for(redis_server.url)
    log = data_dir / "outbox-crash-worker.log"
    worker = worker_on(redis_server.url, data_dir, log.name)
    try:
        wait_for_worker(app, worker, log)
        assert app.AsyncResult(task_id).get(timeout=60) == 99
        wait_until(lambda: not queued_messages(redis.Redis.from_url(redis_server.url), "sync"), timeout=30)
        time.sleep(1)
        assert runs_of(task_id, log) == 1, "the second copy ran too"
    finally:
        worker.stop()


def test_a_single_relay_pass_with_the_broker_down_exits_non_zero_and_keeps_the_task(data_dir: Path) -> None:
    kept = calls.apply_async("sync.echo", (3,), app=app_for(dead_url()))
    log = data_dir / "outbox-relay.log"
    before = log.stat().st_size if log.exists() else 0
    once = relay_process(data_dir, dead_url(), "--once").start()
    assert once.proc is not None and once.proc.wait(120) == 1
    output = log.read_bytes()[before:].decode()
    assert "published 0 task(s)" in output and "CommandError: stopped: broker at" in output
    assert OutboxMessage.objects.get(task_id=kept.id).attempts == 1


# --- the platform's fan-outs ----------------------------------------------------------------

FAN_OUT = """
import json, sys
from celery.signals import after_task_publish
from django.db import transaction

published = []
after_task_publish.connect(lambda headers=None, **_: published.append(headers), weak=False)
service, task, atomic = sys.argv[1:4]
__import__(f"{service}.app")  # as the worker does: the app sets Django up, then loads its tasks
fan_out = getattr(__import__(f"{service}.tasks", fromlist=[task]), task)
from common.outbox.models import OutboxMessage

out = {}
if atomic == "atomic":
    with transaction.atomic():
        out["result"] = fan_out()
        out["published_before_commit"] = len(published)
        out["kept_before_commit"] = OutboxMessage.objects.count()
else:
    out["result"] = fan_out()
out["published"] = [[h["id"], h.get("x_outbox", False)] for h in published]
out["kept"] = [[m.task_name, m.args] for m in OutboxMessage.objects.order_by("pk")]
print(json.dumps(out))
"""


def run_fan_out(service: str, task: str, *, atomic: bool, env: dict[str, str] | None = None) -> dict:
    """Run a fan-out task's body in a process of its own, as its worker would."""
    done = subprocess.run(
        [sys.executable, "-c", FAN_OUT, service, task, "atomic" if atomic else "plain"],
        env=child_env({**BACKEND, **(env or {})}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def due_appointments(n: int, tag: str) -> list[Appointment]:
    Appointment.objects.filter(reminder_sent_at__isnull=True).update(reminder_sent_at=timezone.now())
    doctor = Doctor.objects.create(first_name="Fan", last_name="Out", email=f"{tag}@clinic.example")
    soon = timezone.now() + timedelta(hours=2)
    return [
        Appointment.objects.create(
            doctor=doctor,
            patient=Patient.objects.create(
                name=f"Pat {i}", email=f"{tag}-{i}@mail.example", gateway_customer_id="cus_x"
            ),
            scheduled_at=soon,
            amount=Decimal("10.00"),
        )
        for i in range(n)
    ]


def test_daily_reminders_fan_out_while_the_broker_is_down_keeps_every_task() -> None:
    appointments = due_appointments(20, "down")
    started = time.monotonic()
    out = run_fan_out("emails", "send_daily_reminders", atomic=False, env={"REDIS_URL": dead_url()})
    print(f"fan-out of 20 with the broker down took {time.monotonic() - started:.2f} s")
    assert out["result"] == {"status": "queued", "reminders": 20}
    assert out["published"] == []
    assert out["kept"] == [["emails.send_appointment_reminder", [a.pk]] for a in appointments]


def test_daily_reminders_fan_out_in_a_transaction_sends_each_reminder_once_after_the_commit(
    workers: Workers, smtp_sink
) -> None:
    appointments = due_appointments(5, "atomic")
    out = run_fan_out("emails", "send_daily_reminders", atomic=True)
    assert out["result"] == {"status": "queued", "reminders": 5}
    assert (out["published_before_commit"], out["kept_before_commit"]) == (0, 5)
    assert len(out["published"]) == 5 and all(x_outbox for _, x_outbox in out["published"])
    assert out["kept"] == []
    wait_until(lambda: all(a.patient.email in recipients(smtp_sink) for a in appointments), timeout=60)
    time.sleep(1)
    for a in appointments:
        assert recipients(smtp_sink).count(a.patient.email) == 1


def recipients(smtp_sink) -> list[str]:
    return [m["To"] for m in smtp_sink.messages]


def test_sync_all_doctors_fan_out_in_a_transaction_syncs_every_doctor(workers: Workers, crm_sandbox) -> None:
    doctors = [
        Doctor.objects.create(first_name="Tx", last_name=f"Sync{i}", email=f"tx-sync-{i}@clinic.example")
        for i in range(3)
    ]
    out = run_fan_out("sync", "sync_all_doctors", atomic=True)
    total = Doctor.objects.count()
    assert out["result"] == {"status": "success", "queued": total}
    assert (out["published_before_commit"], out["kept_before_commit"]) == (0, total)
    assert len(out["published"]) == total and out["kept"] == []
    wait_until(lambda: all(str(d.pk) in crm_sandbox.doctors for d in doctors), timeout=60)


# --- the admin -----------------------------------------------------------------------------


def test_the_admin_lists_kept_messages_read_only() -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    kept = calls.apply_async("sync.echo", (5,), app=app_for(dead_url()))
    user, _ = get_user_model().objects.get_or_create(
        username="outbox-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client(SERVER_NAME="localhost")
    client.force_login(user)
    listing = client.get("/admin/outbox/outboxmessage/")
    assert listing.status_code == 200 and kept.id in listing.content.decode()
    row = OutboxMessage.objects.get(task_id=kept.id)
    assert client.get("/admin/outbox/outboxmessage/add/").status_code == 403
    assert client.post(f"/admin/outbox/outboxmessage/{row.pk}/change/", {"queue": "x"}).status_code == 403
    assert client.post(f"/admin/outbox/outboxmessage/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert OutboxMessage.objects.get(pk=row.pk).queue == "sync"

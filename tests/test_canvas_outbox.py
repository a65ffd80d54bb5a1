"""Canvas (chain, group, chord) through the outbox, on real workers and a real Redis.

What is measured: a chain, a group and a chord sent inside a transaction that rolls back
publish nothing (no message, no chord state in Redis, nothing runs); committed, each task
runs once and the chord's callback once with every result; sent while Redis is stopped, all
of their messages are kept in the outbox and, once Redis, the workers and the relay
(`web.manage relay_outbox`) are back, everything runs completely, once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery, chord, group
from django.db import transaction

from common import calls
from common.celery_app import current_app
from common.outbox.models import OutboxMessage
from devtools.local_redis import LocalRedis
from devtools.processes import ServiceProcess, wait_for_workers
from devtools.testing.workers import Workers
from tests.test_outbox import BACKEND, app_for, relay_process

ADMIN = "ops-canvas@clinic.example"
NOTIFIED = {"status": "notified", "items": 3, "admin_notified": True}


@pytest.fixture(autouse=True)
def empty_outbox() -> None:
    OutboxMessage.objects.all().delete()


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    env = {**peers_env, "ADMIN_EMAIL": ADMIN}
    try:
        w.start(["sync", "emails"], env={"sync": env, "emails": env})
        yield w
    finally:
        w.stop()


def sig(name: str, *args: int, app: Celery | None = None):
    return calls.signature(name, args, app=app)


def shapes(app: Celery | None = None, base: int = 0) -> dict:
    """A chain, a group and a chord of sync.echo (the chord calls emails.notify_admin back)."""
    return {
        "chain": sig("sync.echo", base + 1, app=app) | sig("sync.echo", app=app) | sig("sync.echo", app=app),
        "group": group([sig("sync.echo", base + i, app=app) for i in (1, 2, 3)], app=app),
        "chord": chord(
            [sig("sync.echo", base + i, app=app) for i in (4, 5, 6)], sig("emails.notify_admin", app=app)
        ),
    }


def ids_of(result) -> list[str]:
    """Every task id a canvas's result knows of (its parents and a group's members; not group ids)."""
    out, todo = [], [result]
    while todo:
        r = todo.pop()
        members = getattr(r, "results", None)
        if members is None:
            out.append(r.id)
        todo += list(members or []) + ([r.parent] if r.parent is not None else [])
    return out


def runs_of(task_id: str, *logs: Path) -> int:
    return sum(len(re.findall(rf"\[{re.escape(task_id)}\] succeeded", log.read_text())) for log in logs)


def admin_mail(smtp_sink) -> list:
    return [m for m in smtp_sink.messages if m["To"] == ADMIN]


def test_a_canvas_in_a_transaction_that_rolls_back_publishes_nothing(
    workers: Workers, data_dir: Path, redis_client, smtp_sink
) -> None:
    mail_before = len(admin_mail(smtp_sink))
    with pytest.raises(RuntimeError), transaction.atomic():
        results = {name: flow.apply_async() for name, flow in shapes().items()}
        kept = OutboxMessage.objects.count()
        raise RuntimeError("the caller's work failed")
    print(f"\n[canvas rollback] {kept} message(s) kept in the transaction, then rolled back")
    assert kept == 7  # the chain's first step, the group's 3, the chord's header of 3
    time.sleep(2)  # time enough for any published task to have run
    logs = [data_dir / "sync-worker.log", data_dir / "emails-worker.log"]
    text = "".join(log.read_text() for log in logs)
    ids = [i for r in results.values() for i in ids_of(r)]
    assert not [i for i in ids if i in text], "a task of a rolled-back canvas reached a worker"
    assert all(redis_client.get(f"celery-task-meta-{i}") is None for i in ids)
    group_id = results["chord"].parent.id
    assert not redis_client.keys(f"*{group_id}*"), "the rolled-back chord was set up in Redis"
    assert len(admin_mail(smtp_sink)) == mail_before and not OutboxMessage.objects.exists()


def test_a_committed_canvas_runs_each_task_once_and_the_chord_calls_back_once(
    workers: Workers, data_dir: Path, smtp_sink
) -> None:
    mail_before = len(admin_mail(smtp_sink))
    started = time.monotonic()
    with transaction.atomic():
        results = {name: flow.apply_async() for name, flow in shapes(base=10).items()}
        assert OutboxMessage.objects.count() == 7
    assert results["chain"].get(timeout=60) == 11
    assert results["group"].get(timeout=60) == [11, 12, 13]
    assert results["chord"].get(timeout=60) == NOTIFIED
    took = time.monotonic() - started
    print(f"\n[canvas commit] chain, group and chord done {took:.2f} s after the commit")
    assert not OutboxMessage.objects.exists()
    time.sleep(1)
    logs = [data_dir / "sync-worker.log", data_dir / "emails-worker.log"]
    runs = {i: runs_of(i, *logs) for r in results.values() for i in ids_of(r)}
    assert set(runs.values()) == {1}, runs
    mails = admin_mail(smtp_sink)[mail_before:]
    assert len(mails) == 1
    for value in (14, 15, 16):
        assert str(value) in mails[0].get_payload()


def start_worker(service: str, redis_url: str, data_dir: Path, env: dict[str, str]) -> ServiceProcess:
    return ServiceProcess(
        service,
        f"{service}.worker",
        ["--without-mingle", "--without-gossip"],
        env={**BACKEND, **env, "REDIS_URL": redis_url, "ADMIN_EMAIL": ADMIN},
        log=data_dir / f"canvas-down-{service}.log",
    ).start()


def test_a_canvas_sent_while_redis_is_stopped_is_kept_whole_and_runs_completely_once_it_is_back(
    data_dir: Path, peers_env: dict[str, str], smtp_sink
) -> None:
    current_app()  # this process's own app, made (hooks and all) by a contract's `.s()` as a rule
    redis_server = LocalRedis().start()
    app = app_for(redis_server.url)
    redis_server.stop()
    started = time.monotonic()
    results = {name: flow.apply_async() for name, flow in shapes(app, base=20).items()}
    took = time.monotonic() - started
    kept = list(OutboxMessage.objects.order_by("pk"))
    print(f"\n[canvas redis down] 3 canvases sent in {took:.2f} s, {len(kept)} message(s) kept")
    assert [k.task_name for k in kept] == ["sync.echo"] * 7
    assert kept[-1].options["message"]["setup"][0][0] == "set_chord_size"

    redis_server = LocalRedis(port=redis_server.port).start()
    procs = [start_worker(s, redis_server.url, data_dir, peers_env) for s in ("sync", "emails")]
    relay = relay_process(data_dir, redis_server.url, "--interval", "0.2")
    try:
        wait_for_workers(app, ["sync", "emails"], timeout=120)
        mail_before = len(admin_mail(smtp_sink))
        back = time.monotonic()
        relay.start()
        assert results["chain"].get(timeout=60) == 21
        assert results["group"].get(timeout=60) == [21, 22, 23]
        assert results["chord"].get(timeout=60) == NOTIFIED
        print(f"[canvas redis down] all done {time.monotonic() - back:.2f} s after the relay started")
        assert not OutboxMessage.objects.exists()
        time.sleep(1)
        logs = [data_dir / "canvas-down-sync.log", data_dir / "canvas-down-emails.log"]
        ids = [i for r in results.values() for i in ids_of(r)]
        runs = {i: runs_of(i, *logs) for i in ids}
        assert set(runs.values()) == {1}, runs
        assert len(admin_mail(smtp_sink)) == mail_before + 1
        client = redis.Redis.from_url(redis_server.url)
        assert client.llen("sync") == 0 and client.llen("emails") == 0
    finally:
        relay.stop()
        for proc in procs:
            proc.stop()
        redis_server.stop()

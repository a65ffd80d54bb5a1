"""Several relays and the post-commit publish share the outbox on PostgreSQL: each task once.

Rows are claimed with SELECT ... FOR UPDATE SKIP LOCKED, so no two publishers send the same
row. Runs on a fresh PostgreSQL database (TEST_DATABASE=postgres, see tests/BUILD).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import redis
from django.db import connection, transaction

from common import calls
from common.outbox.models import OutboxMessage
from devtools.local_redis import LocalRedis
from devtools.testing.waiting import wait_until
from tests.test_outbox import app_for, dead_url, relay_process


def published_ids(client: redis.Redis) -> Counter[str]:
    keys = [k for k in client.keys("sync*") if k.decode().split("\x06\x16")[0] == "sync"]
    return Counter(json.loads(raw)["headers"]["id"] for key in keys for raw in client.lrange(key, 0, -1))


def test_three_relays_and_committing_producers_publish_every_task_exactly_once(data_dir: Path) -> None:
    assert connection.vendor == "postgresql", "needs TEST_DATABASE=postgres (see tests/BUILD)"
    OutboxMessage.objects.all().delete()
    dead = app_for(dead_url())
    kept = [calls.apply_async("sync.echo", (i,), app=dead).id for i in range(300)]
    assert OutboxMessage.objects.count() == 300

    redis_server = LocalRedis().start()
    live = app_for(redis_server.url)
    relays = [
        relay_process(data_dir, redis_server.url, "--interval", "0.05", "--batch-size", "7").start()
        for _ in range(3)
    ]
    try:
        committed = []
        started = time.monotonic()
        for i in range(40):  # while the relays drain, commits publish their own rows
            with transaction.atomic():
                committed += [calls.apply_async("sync.echo", (i,), app=live).id for _ in range(5)]
        wait_until(lambda: not OutboxMessage.objects.exists(), timeout=120)
        print(f"3 relays drained 300 kept tasks (and 200 committed) in {time.monotonic() - started:.2f} s")
        assert all(r.running for r in relays)
    finally:
        for r in relays:
            r.stop()
    ids = published_ids(redis.Redis.from_url(redis_server.url))
    redis_server.stop()
    assert set(ids) == set(kept) | set(committed)
    duplicates = {task_id: n for task_id, n in ids.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} task(s) published more than once"

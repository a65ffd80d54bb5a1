"""Results keep what operators read (task name, worker) but never a task's arguments.

`result_extended` would store each task's args and kwargs in its result in Redis for an hour;
an onboarding payload naming and emailing a doctor must not be readable there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.result import AsyncResult

from common.celery_app import current_app
from common.models import Doctor
from contracts import emails, sync
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers

NAME = ("Zebulon", "Quixotewright")
EMAIL = "zebulon.quixotewright@payload-probe.example"


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir)
    services = ("sync", "emails")
    try:
        w.start(services, env={s: peers_env for s in services})
        yield w
    finally:
        w.stop()


def every_value(client) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) for every key in Redis, whatever its type."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            yield key, client.get(key) or b""
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                yield key, field + b"=" + value
        elif kind == b"list":
            for value in client.lrange(key, 0, -1):
                yield key, value
        elif kind == b"set":
            for value in client.smembers(key):
                yield key, value
        elif kind == b"zset":
            for value, _ in client.zrange(key, 0, -1, withscores=True):
                yield key, value
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                for field, value in fields.items():
                    yield key, field + b"=" + value


def test_onboarding_results_hold_no_name_or_email(workers, redis_client, crm_sandbox) -> None:
    doctor = Doctor.objects.create(first_name=NAME[0], last_name=NAME[1], email=EMAIL)
    # The onboarding chain, then the admin told who was onboarded: a payload with the name
    # and email as arguments (what `result_extended` would have copied into the result).
    flow = (
        sync.validate_doctor.s(doctor.pk)
        | sync.create_account.s()
        | emails.send_onboarding_email.s()
        # Sent unchecked, as an older or foreign producer could: the contract refuses a name.
        | current_app().signature(
            "emails.notify_admin",
            ({"event": "onboarded", "doctor_id": doctor.pk, "name": " ".join(NAME), "email": EMAIL},),
            immutable=True,
        )
    )
    last = flow.apply_async()
    assert last.get(timeout=60)["admin_notified"] is True
    assert crm_sandbox.doctors[str(doctor.pk)]["email"] == EMAIL  # the chain really ran

    # Every step's result, walked back from the last through its parents.
    results, node = [], last
    while node is not None:
        results.append(node)
        node = node.parent
    names = [r.name for r in reversed(results)]
    assert names == [
        "sync.validate_doctor",
        "sync.create_account",
        "emails.send_onboarding_email",
        "emails.notify_admin",
    ]
    for r in results:
        fresh = AsyncResult(r.id, app=current_app())
        assert fresh.state == "SUCCESS"
        assert fresh.worker == workers.names[fresh.name.split(".")[0]], fresh.worker
        assert fresh.date_done is not None

    # The last message is acknowledged a moment after its result is stored; until then it
    # is in flight, arguments and all, as a message must be. Once settled, nothing remains.
    wait_until(
        lambda: not any(redis_client.hlen(k) for k in redis_client.scan_iter("jobs.inflight:*")), timeout=10
    )
    needles = [EMAIL.encode(), NAME[0].encode(), NAME[1].encode()]
    scanned, found = 0, []
    for key, value in every_value(redis_client):
        scanned += 1
        found += [(key, n) for n in needles if n.lower() in value.lower()]
    assert scanned >= len(results)
    assert not found, f"personal data stored in Redis: {found}"

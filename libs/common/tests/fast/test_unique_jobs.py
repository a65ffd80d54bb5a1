"""Unique jobs in the fast tier: the key, the declaration, and the stub broker honouring them."""

from __future__ import annotations

import pytest

from common.transport import unique_jobs
from common.transport.broker import uniqueness
from contracts import sync
from contracts.declare import ServiceContracts, Unique


def test_the_key_depends_on_the_declared_arguments_only_and_not_on_how_they_are_passed():
    service = ServiceContracts("keys")

    @service.task(unique=Unique(on=("doctor_id", "kind")))
    def push(doctor_id: int, kind: str = "full", note: str = "") -> None: ...

    key = push.unique_key((7,), {})
    assert key is not None and key.startswith("jobs.unique:keys.push:")
    assert push.unique_key((), {"doctor_id": 7}) == key  # keyword or positional: one key
    assert push.unique_key((7, "full"), {}) == key  # the default applied
    assert push.unique_key((7,), {"note": "other"}) == key  # an undeclared argument: same key
    assert push.unique_key((8,), {}) != key
    assert push.unique_key((7, "delta"), {}) != key
    assert len(key.rpartition(":")[2]) == 32  # a hash of the values, never the values
    assert push.unique_key((), {"nope": 1}) is None  # does not bind: the intake judges it


def test_a_declaration_must_name_its_parameters_and_a_sane_lease():
    service = ServiceContracts("bad")
    with pytest.raises(ValueError, match="must name its parameters"):

        @service.task(unique=Unique(on=("missing",)))
        def a(doctor_id: int) -> None: ...

    for wrong in ({"until": "never"}, {"seconds": 0}, {"seconds": 10, "debounce": 20}):
        with pytest.raises(ValueError):
            Unique(on=("x",), **wrong)


def test_the_crm_sync_is_declared_unique_per_doctor_until_it_starts():
    spec = sync.sync_doctor_to_external_system.unique
    assert spec is not None and spec.on == ("doctor_id",) and spec.until == "start" and spec.debounce == 0
    assert sync.echo.unique is None


def test_the_publish_header_is_given_only_by_a_declaration():
    headers = {
        "id": "t1",
        "task": "sync.echo",
        "retries": 0,
        "x_unique": ["jobs.unique:x", 9, "s"],
    }
    unique_jobs.on_publish(sender="sync.echo", body=([1], {}, {}), headers=headers)
    assert "x_unique" not in headers  # a caller cannot make a plain task unique (or hold a key)

    headers = {"id": "t2", "task": "sync.sync_doctor_to_external_system", "retries": 0}
    unique_jobs.on_publish(sender=headers["task"], body=([7], {}, {}), headers=headers)
    assert headers["x_unique"] == [sync.sync_doctor_to_external_system.unique_key((7,)), 600_000, "s"]
    header = uniqueness.header_of({"headers": headers})
    assert header == uniqueness.Header(headers["x_unique"][0], 600_000, "start", False, False)


@pytest.mark.parametrize(
    "header",
    [None, "x", {"key": "jobs.unique:a"}, ["jobs.owners", 5, "s"], ["jobs.unique:a", -1, "s"],
     ["jobs.unique:a", True, "s"], ["jobs.unique:" + "a" * 600, 5, "s"], ["jobs.unique:a", 5, "x"],
     ["jobs.unique:a", 5, "s", "extra"], ["jobs.unique:a", 10**15, "f"], [None, None, None]],
)  # fmt: skip
def test_a_malformed_header_is_ignored_not_obeyed(header):
    assert uniqueness.header_of({"headers": {"id": "t", "x_unique": header}}) is None
    assert uniqueness.header_of({"headers": {"id": "t", "x_unique": ["jobs.unique:a", 5, "fd"]}}) == (
        uniqueness.Header("jobs.unique:a", 5, "finish", False, True)
    )


def test_a_burst_for_one_doctor_queues_one_sync_and_every_caller_follows_it(jobs):
    results = [sync.sync_doctor_to_external_system.delay(7) for _ in range(5)]
    other = sync.sync_doctor_to_external_system.delay(8)
    assert jobs.queued == [
        ("sync.sync_doctor_to_external_system", [7], {}),
        ("sync.sync_doctor_to_external_system", [8], {}),
    ]
    assert {r.id for r in results} == {jobs.messages[0].id}  # duplicates point at the queued one
    assert other.id == jobs.messages[1].id
    jobs.run_all()
    sync.sync_doctor_to_external_system.delay(7)  # it started: the key is free again
    assert len(jobs.queued) == 1


def test_a_debounced_burst_runs_once_with_the_last_arguments_and_frees_its_key_at_the_end(jobs):
    for value in range(1, 6):
        sync.probe_unique.delay(1, value)
    assert jobs.queued == [("sync.probe_unique", [1, 5], {})]
    key = sync.probe_unique.unique_key((1, 5))
    assert jobs.redis.get(key) is not None
    jobs.run_all()
    assert jobs.results("sync.probe_unique") == [5]
    assert jobs.redis.get(key) is None  # until="finish": released when it ended


def test_the_key_of_ids_is_the_hash_of_their_json():
    import hashlib
    import json

    for args in ((7,), (-3,), (10**20,)):
        text = json.dumps(list(args), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        assert sync.sync_doctor_to_external_system.unique_key(args) == (
            f"jobs.unique:sync.sync_doctor_to_external_system:{digest}"
        )

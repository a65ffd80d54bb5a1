"""The intake against hostile messages, in-process: what a worker admits, and why it refuses.

Each message goes through the transport's real admission (`Channel._admit`: size guard,
bounded JSON decode, envelope shape, then `common.transport.intake.check` with the sync
service's real tasks and contracts). No worker and no queue: the fault suite
(tests/faults/test_poison_messages.py) sends the same shapes to a real worker.
"""

from __future__ import annotations

import base64
import collections
import copy
import json
import os
import random
import uuid
from collections.abc import Iterator
from typing import Any

import celery
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sync.tasks  # noqa: F401 - registers the sync service's tasks on its app
from common.transport import intake, protocol
from common.transport.broker.transport import Channel
from common.transport.dead_letter_store import (
    CONTENT_TYPE,
    CRASHED_CONSUMER,
    INVALID_ARGUMENTS,
    MALFORMED,
    TOO_LARGE,
    UNDECODABLE,
    UNKNOWN_TASK,
    Rejection,
)
from sync.app import app

MAX_PAYLOAD = 20_000


@pytest.fixture(autouse=True)
def sync_service_app(jobs: Any) -> Iterator[None]:
    """The intake checks against the process's app: here, the sync service's; it asks the
    harness's in-memory Redis (`jobs`) whether a task was revoked."""
    previous = celery.current_app._get_current_object()
    app.set_current()
    yield
    previous.set_current()


def admission() -> Channel:
    """A channel as a sync worker configures it, for its admission step alone (no connection)."""
    channel = object.__new__(Channel)
    channel.max_payload_bytes = MAX_PAYLOAD
    channel._intake_module = intake
    return channel


def message(
    task: str = "sync.echo",
    body: Any = ((1,), {}, {}),
    *,
    raw_body: bytes | None = None,
    content_type: str = "application/json",
    **headers: Any,
) -> bytes:
    """A Celery protocol-2 message as a producer would push it, with what the test spoils."""
    task_id = str(uuid.uuid4())
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    return json.dumps(
        {
            "body": base64.b64encode(data).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "retries": 0, **headers},
            "properties": {"body_encoding": "base64", "delivery_tag": task_id, "delivery_info": {}},
        }
    ).encode()


def refusal(raw: bytes) -> Rejection:
    with pytest.raises(Rejection) as caught:
        admission()._admit(raw, "sync", "tag")
    return caught.value


def test_a_good_message_is_admitted() -> None:
    payload = admission()._admit(message(body=[[7], {}, {}]), "sync", "tag")
    assert protocol.task_call(payload)[0] == [7]
    assert payload["properties"]["delivery_info"]["routing_key"] == "sync"


@pytest.mark.parametrize("depth", [150, 30_000, 100_000])
def test_a_deeply_nested_body_is_refused_not_raised(depth: int) -> None:
    """A body nested 100,000 deep made json.loads raise RecursionError into kombu's loop."""
    rejection = refusal(message(raw_body=b"[" * depth + b"]" * depth))
    assert rejection.reason in (MALFORMED, TOO_LARGE), rejection
    assert rejection.task == "sync.echo" and rejection.task_id


def test_deeply_nested_headers_are_refused_with_the_task_named() -> None:
    raw = message(extra=json.loads("[" * 500 + "]" * 500))
    rejection = refusal(raw)
    assert rejection.reason == UNDECODABLE and "nests deeper" in rejection.detail
    assert rejection.task == "sync.echo" and rejection.task_id  # its caller's .get() is answered
    hundred_thousand = raw.replace(b'"extra": [', b'"extra": ' + b"[" * 100_000, 1)
    assert refusal(hundred_thousand.replace(b"]", b"]" * 100_000, 1)).reason in (UNDECODABLE, TOO_LARGE)


@pytest.mark.parametrize(
    "task, body",
    [
        ("celery.map", [[{"task": "sync.echo", "args": [], "kwargs": {}}, [["not-an-int"]]], {}, {}]),
        ("celery.starmap", [[{"task": "payments.process_payment"}, [["1; DROP TABLE x"]]], {}, {}]),
        ("celery.chunks", [[{"task": "sync.echo"}, [["x"]], 1], {}, {}]),
        ("celery.accumulate", [["Ada Lovelace"], {}, {}]),
        ("celery.chord_unlock", [["group-id", {"task": "sync.echo"}], {}, {}]),
    ],
)
def test_celery_builtin_tasks_are_refused(task: str, body: Any) -> None:
    """They run other tasks in-process with unchecked arguments, or store what they are sent."""
    assert task in app.tasks  # registered on every Celery app: the name alone lets them in
    rejection = refusal(message(task, body))
    assert rejection.reason == UNKNOWN_TASK and "built-in" in rejection.detail


@pytest.mark.parametrize(
    "limits", [[-1, None], [None, 0], [float("inf"), None], [1e400, None], [True, None], ["1", "2"]]
)
def test_a_time_limit_that_is_not_a_positive_number_is_refused(limits: list[Any]) -> None:
    assert refusal(message(timelimit=limits)).reason in (MALFORMED, UNDECODABLE)


def test_nan_anywhere_is_not_json() -> None:
    raw = message(timelimit=[1, 2]).replace(b"[1, 2]", b"[NaN, 2]")
    assert refusal(raw).reason == UNDECODABLE
    assert refusal(message(raw_body=b"[[NaN], {}, {}]")).reason == MALFORMED


def test_a_message_may_shorten_its_time_limits_but_never_lift_them() -> None:
    echo = app.tasks["sync.echo"]
    configured = (echo.time_limit, echo.soft_time_limit)
    assert None not in configured  # task_time_limit / task_soft_time_limit apply to every task
    lifted = admission()._admit(message(timelimit=[10**9, 10**9]), "sync", "tag")
    assert tuple(lifted["headers"]["timelimit"]) == configured
    shortened = admission()._admit(message(timelimit=[5, 2]), "sync", "tag")
    assert shortened["headers"]["timelimit"] == [5, 2]


def test_a_shadow_name_never_reaches_celery() -> None:
    """Celery logs a task under `shadow`: a message could pass for another task in the logs."""
    payload = admission()._admit(message(shadow="payments.refund_everyone"), "sync", "tag")
    assert "shadow" not in payload["headers"]


def test_what_the_intake_already_refused_still_is() -> None:
    assert refusal(message(content_type="application/x-python-serialize")).reason == CONTENT_TYPE
    assert refusal(message(body=[["not-an-int"], {}, {}])).reason == INVALID_ARGUMENTS
    assert refusal(message("payments.process_payment", [[1], {}, {}])).reason == UNKNOWN_TASK
    assert refusal(message(body=[[1], {"pad": "x" * 120_000}, {}])).reason == TOO_LARGE
    assert refusal(b"\x80garbage").reason == UNDECODABLE


# --- generated hostile input --------------------------------------------------------------
# Every case goes through the real admission; anything but an admitted payload or a
# Rejection with a reason is a finding. The safety net in Channel._deliver_one (any other
# exception becomes a "crashed-consumer" dead letter) must never be what catches it.
FUZZ_CASES = int(os.environ.get("INTAKE_FUZZ_CASES", "400"))  # structured: about 50 ms a case
MUTATION_CASES = int(os.environ.get("INTAKE_MUTATION_CASES", "100000"))  # mutated: about 0.1 ms
_tried = {"cases": 0, "admitted": 0}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
task_names = st.sampled_from(
    ["sync.echo", "sync.create_account", "sync.validate_doctor", "celery.map", "celery.accumulate",
     "payments.process_payment", "", "sync."]
) | st.text(max_size=30)  # fmt: skip
header_values = {
    "task": task_names | json_values,
    "id": st.uuids().map(str) | json_values,
    "timelimit": st.lists(st.none() | st.integers() | st.floats(), max_size=3) | json_values,
    "eta": st.datetimes().map(lambda d: d.isoformat()) | json_values,
    "expires": st.floats(allow_nan=False) | json_values,
    "retries": st.integers() | json_values,
    "shadow": json_values,
    "group": json_values,
    "root_id": json_values,
    "parent_id": json_values,
}
headers = st.fixed_dictionaries(
    {"task": header_values["task"], "id": header_values["id"]},
    optional={k: v for k, v in header_values.items() if k not in ("task", "id")},
) | st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A body as the producer would encode it, a well-shaped call, or a hostile shape."""
    kind = draw(st.sampled_from(["echo", "call", "json", "deep", "large", "bytes", "text"]))
    if kind == "echo":
        return json.dumps([[draw(st.integers())], {}, {}]).encode()
    if kind == "call":
        args = draw(st.lists(json_values, max_size=3))
        kwargs = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        embed = draw(
            st.none() | st.dictionaries(st.sampled_from(["callbacks", "chain", "chord"]), json_values)
        )
        value: Any = [args, kwargs, embed]
        return json.dumps(value).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.integers(50, 60_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return b"[[" + opener * depth + b"1" + closer * depth + b"], {}, {}]"
    if kind == "large":
        return json.dumps([["x" * draw(st.integers(10_000, 120_000))], {}, {}]).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """Raw queue items: junk, JSON that is no envelope, and envelopes with parts spoiled."""
    kind = draw(st.sampled_from(["envelope", "envelope", "envelope", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    body = draw(bodies())
    encoding = draw(st.sampled_from(["base64", "base64", "utf-8", "junk"]))
    envelope: dict[str, Any] = {
        "body": base64.b64encode(body).decode() if encoding == "base64" else body.decode("utf-8", "replace"),
        "content-type": draw(
            st.sampled_from(["application/json", "application/x-python-serialize", ""]) | json_values
        ),  # fmt: skip
        "content-encoding": "utf-8",
        "headers": draw(headers | json_values),
        "properties": draw(
            st.fixed_dictionaries(
                {"body_encoding": st.just(encoding) | json_values},
                optional={"delivery_info": json_values, "priority": json_values, "delivery_tag": json_values},
            )
            | json_values
        ),
    }
    for key in draw(st.sets(st.sampled_from(sorted(envelope)), max_size=2)):
        del envelope[key]  # a part missing altogether
    raw = json.dumps(envelope).encode()
    if draw(st.booleans()) and raw:  # mutate a byte, as a bad disk or a hostile client would
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    return raw


@settings(
    max_examples=FUZZ_CASES,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=list(HealthCheck),
)
@given(raw=envelopes())
def test_no_generated_message_escapes_the_intake(raw: bytes) -> None:
    _tried["cases"] += 1
    try:
        payload = admission()._admit(raw, "sync", "tag")
    except Rejection as rejection:
        assert rejection.reason != CRASHED_CONSUMER and rejection.reason and rejection.detail
        return
    _tried["admitted"] += 1
    # Admitted: a call Celery can run, of a task this service has, whose arguments fit.
    args, kwargs, _ = protocol.task_call(payload)
    assert payload["headers"]["task"] in app.tasks
    assert not payload["headers"]["task"].startswith("celery.")
    json.dumps([args, kwargs])


# Volume: seeded random mutations of well-formed messages, cheap enough for 100,000 cases in
# seconds. Each takes one to three mutations: a header, the body's call or its bytes, the
# envelope's parts, or the raw bytes (flips, cuts, splices, nesting).
HOSTILE = [
    None, True, -1, 0, 2**64, 1e308, -1e-9, "", "x" * 70_000, "\ud800", "2026-13-45T99:99", "NaN",
    [], {}, [None, None], [-5, 1], [1, 2, 3], ["1", "2"], {"__type__": "datetime", "__value__": "x"},
    {"__type__": "nope", "__value__": 1}, [[[[[[]]]]]], "celery.map", "sync.no_such", "payments.refund",
]  # fmt: skip
SEEDS = [
    ("sync.echo", [[7], {}, {}]),
    ("sync.echo", [[], {"value": 3}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]),
    ("sync.validate_doctor", [[42], {}, {}]),
    ("sync.sync_doctor_to_external_system", [[1], {}, {}]),
    ("sync.health_check", [[], {}, {}]),
    ("sync.create_account", [[{"doctor_id": 1, "valid": True, "problems": []}], {}, {}]),
]


def _hostile(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(HOSTILE))


def _nest(rng: random.Random, value: Any) -> bytes:
    depth = rng.choice([90, 101, 1_000, 20_000])
    return b"[" * depth + json.dumps(value).encode() + b"]" * depth


def mutate(rng: random.Random) -> bytes:
    task, body = rng.choice(SEEDS)
    env = json.loads(message(task, body))
    for _ in range(rng.randint(1, 3)):
        _mutate_part(rng, env)
    raw = json.dumps(env).encode()
    for _ in range(rng.choice([0, 0, 1, 2])):  # bytes: flip, cut, splice, nest
        at = rng.randrange(max(1, len(raw)))
        op = rng.randrange(4)
        if op == 0:
            raw = raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1 :]
        elif op == 1:
            raw = raw[:at]
        elif op == 2:
            raw = raw[:at] + raw[rng.randrange(max(1, len(raw))) :]
        else:
            raw = raw[:at] + _nest(rng, 1) + raw[at:]
    return raw


HEADERS = ["task", "id", "timelimit", "eta", "expires", "retries", "shadow", "group", "root_id"]


def _mutate_part(rng: random.Random, env: dict[str, Any]) -> None:
    """One structured mutation; none when an earlier one already broke what it would change."""
    where = rng.randrange(5)
    headers, properties = env.get("headers"), env.get("properties")
    if where == 0 and isinstance(headers, dict):  # a header: hostile value, or gone
        key = rng.choice(HEADERS)
        if rng.random() < 0.2:
            headers.pop(key, None)
        else:
            headers[key] = _hostile(rng)
    elif where == 1 and isinstance(env.get("body"), str):  # the call inside the body
        try:
            call = json.loads(base64.b64decode(env["body"]))
        except (ValueError, RecursionError):  # an earlier mutation nested or spoiled it
            return
        if isinstance(call, list) and len(call) == 3:
            call[rng.randrange(3)] = _hostile(rng) if rng.random() < 0.5 else [_hostile(rng)]
        raw_call = _nest(rng, call) if rng.random() < 0.2 else json.dumps(call).encode()
        env["body"] = base64.b64encode(raw_call).decode()
    elif where == 2:  # the envelope's parts
        env[rng.choice(["body", "headers", "properties", "content-type"])] = _hostile(rng)
    elif isinstance(properties, dict):  # how the body is encoded, or delivery properties
        key = "body_encoding" if where == 3 else rng.choice(["delivery_info", "priority", "delivery_tag"])
        properties[key] = (
            rng.choice(["utf-8", "base64", None, "rot13"]) if rng.random() < 0.5 else _hostile(rng)
        )


def test_mutated_messages_never_escape_the_intake() -> None:
    rng = random.Random(int(os.environ.get("INTAKE_FUZZ_SEED", "2026")))
    channel, outcomes = admission(), collections.Counter[str]()
    for _ in range(MUTATION_CASES):
        raw = mutate(rng)
        try:
            payload = channel._admit(raw, "sync", "tag")
        except Rejection as rejection:
            assert rejection.reason != CRASHED_CONSUMER and rejection.detail, raw[:300]
            outcomes[rejection.reason] += 1
            continue
        outcomes["admitted"] += 1
        args, kwargs, _ = protocol.task_call(payload)
        assert payload["headers"]["task"] in app.tasks and not payload["headers"]["task"].startswith(
            "celery."
        )
        json.dumps([args, kwargs])
    _tried["cases"] += MUTATION_CASES
    _tried["admitted"] += outcomes["admitted"]
    print(
        f"\n[intake fuzz] {MUTATION_CASES:,} mutated messages: "
        + ", ".join(f"{k} {v:,}" for k, v in outcomes.most_common())
    )
    assert outcomes["admitted"] and len(outcomes) > 4  # the mutations reach past the first checks


def test_fuzz_report() -> None:
    """Prints what the fuzzer tried (runs after it: pytest keeps a module's order)."""
    print(f"\n[intake fuzz] {_tried['cases']:,} generated messages; {_tried['admitted']:,} admitted, "
          "every other one refused with a reason; no exception escaped")  # fmt: skip
    assert _tried["cases"] >= min(FUZZ_CASES, 100)

"""A producer that imports no service sends by name; bad calls never reach the broker or the outbox."""

import time

import pytest
from celery import Celery

from common import calls
from common.celery_app import current_app
from common.outbox.models import OutboxMessage
from common.routing import SERVICES
from contracts import emails, sync
from contracts.declare import InvalidTaskArgumentsError, ServiceContracts, UnknownTaskError, all_contracts


def queued(redis_client) -> int:
    """Messages waiting on any service queue (all priority lists included)."""
    return sum(
        redis_client.llen(key)
        for key in redis_client.keys("*")
        if key.decode().split("\x06\x16")[0] in SERVICES and redis_client.type(key) == b"list"
    )


@pytest.fixture(autouse=True)
def empty_queues(redis_client) -> None:
    redis_client.flushdb()
    OutboxMessage.objects.all().delete()


def test_every_declared_task_is_routed_to_its_own_service_queue() -> None:
    router = current_app().amqp.router
    declared = all_contracts()
    assert {c.queue for c in declared} == set(SERVICES)
    for contract in declared:
        assert router.route({}, contract.name)["queue"].name == contract.queue


def test_send_by_name_publishes_on_the_consuming_services_queue(redis_client) -> None:
    calls.delay("payments.process_payment", 42)
    assert redis_client.llen("payments") == 1
    assert queued(redis_client) == 1


def test_unknown_task_name_is_refused_and_nothing_is_published(redis_client) -> None:
    with pytest.raises(UnknownTaskError, match="No service exposes a task named 'emails.send_welcome'"):
        calls.delay("emails.send_welcome", 1)
    with pytest.raises(UnknownTaskError, match="Did you mean 'emails.send_welcome_email'"):
        calls.delay("doctors.tasks.send_welcome_email", 1)
    assert queued(redis_client) == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "problem"),
    [
        (("7",), {}, "argument 'doctor_id': Input should be a valid integer"),
        ((), {}, "missing a required argument: 'doctor_id'"),
        ((1, 2), {}, "too many positional arguments"),
        ((), {"doctor_id": 1, "urgent": True}, "unexpected keyword argument 'urgent'"),
        ((True,), {}, "argument 'doctor_id'"),
    ],
)
def test_arguments_not_matching_the_contract_are_refused(redis_client, args, kwargs, problem) -> None:
    with pytest.raises(InvalidTaskArgumentsError) as err:
        emails.send_welcome_email.apply_async(args, kwargs)
    assert "emails.send_welcome_email(doctor_id: int)" in str(err.value)
    assert problem in str(err.value)
    assert queued(redis_client) == 0


def test_canvas_signatures_are_checked_leaving_the_chained_argument_open() -> None:
    step = calls.signature("sync.create_account")  # `data` comes from the previous step
    assert step.task == "sync.create_account"
    with pytest.raises(InvalidTaskArgumentsError):
        calls.signature("sync.create_account", immutable=True)
    with pytest.raises(InvalidTaskArgumentsError):
        emails.send_welcome_email.s("not-an-id")


def dead_app() -> Celery:
    from common.celery_config import celery_config
    from common.settings import load_settings
    from devtools.ports import free_port

    dead = Celery("dead")
    dead.conf.update(celery_config(load_settings(redis_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")))
    return dead


def test_unreachable_broker_gives_an_actionable_error_quickly_when_the_outbox_is_declined() -> None:
    started = time.monotonic()
    with pytest.raises(calls.BrokerUnavailableError) as err:
        calls.apply_async("emails.send_welcome_email", (1,), app=dead_app(), outbox=False)
    message = str(err.value)
    assert "unreachable" in message and "REDIS_URL" in message and "not sent" in message
    assert "s3cret" not in message
    assert time.monotonic() - started < 60  # bounded by the publish retry policy, not forever
    assert not OutboxMessage.objects.exists(), "outbox=False keeps nothing"


def test_unreachable_broker_by_default_keeps_the_task_instead_of_raising() -> None:
    result = calls.apply_async("emails.send_welcome_email", (1,), app=dead_app())
    assert OutboxMessage.objects.get(task_id=result.id).task_name == "emails.send_welcome_email"


def big(n: int) -> dict:
    """An argument of exactly `n` bytes as the payload's JSON (`[[{"status": "..."}], {}]`)."""
    return {"status": "x" * (n - len('[[{"status": ""}], {}]'))}


def test_a_payload_over_the_limit_is_refused_before_anything_is_sent_or_kept(redis_client) -> None:
    limit = 1_048_576
    emails.notify_admin.delay(big(limit))  # at the limit: sent
    assert queued(redis_client) == 1
    for attempt in (lambda: emails.notify_admin.delay(big(limit + 1)), lambda: _in_transaction(limit + 1)):
        with pytest.raises(calls.PayloadTooLargeError) as err:
            attempt()
        message = str(err.value)
        assert "emails.notify_admin" in message and f"{limit + 1:,} bytes" in message
        assert f"{limit:,}" in message and "TASK_MAX_PAYLOAD_BYTES" in message and "Pass ids" in message
        assert isinstance(err.value, InvalidTaskArgumentsError)
    assert queued(redis_client) == 1 and not OutboxMessage.objects.exists()
    with pytest.raises(calls.PayloadTooLargeError):  # and when the broker is down: not kept either
        calls.apply_async("emails.notify_admin", (big(limit + 1),), app=dead_app())
    assert not OutboxMessage.objects.exists()


def _in_transaction(size: int) -> None:
    from django.db import transaction

    with transaction.atomic():
        emails.notify_admin.delay(big(size))


def test_the_payload_limit_is_configurable(redis_client, monkeypatch) -> None:
    from common.settings import reset_settings_cache

    monkeypatch.setenv("TASK_MAX_PAYLOAD_BYTES", "100")
    reset_settings_cache()
    try:
        emails.notify_admin.delay(big(100))
        with pytest.raises(calls.PayloadTooLargeError, match="101 bytes as JSON, over the limit of 100"):
            emails.notify_admin.delay(big(101))
    finally:
        monkeypatch.undo()
        reset_settings_cache()
    assert queued(redis_client) == 1


def test_arguments_json_cannot_carry_are_refused_clearly(redis_client) -> None:
    # Typed parameters refuse such a value by type first; an unannotated one (Any) relies on this.
    @ServiceContracts("sync").task
    def anything(value) -> None:
        """A parameter without a type."""

    with pytest.raises(InvalidTaskArgumentsError, match="cannot be sent as JSON.*Pass ids and plain values"):
        calls.delay(anything, {"doctor": object()})
    assert queued(redis_client) == 0 and not OutboxMessage.objects.exists()


def test_a_process_without_django_is_told_how_to_send() -> None:
    import subprocess
    import sys

    from devtools.processes import child_env

    code = (
        "from celery import Celery\n"
        "from common import calls\n"
        "try:\n"
        "    calls.apply_async('sync.echo', (1,), app=Celery('bare'))\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    env = child_env()
    env.pop("DJANGO_SETTINGS_MODULE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "set Django up first" in out.stdout and "outbox=False" in out.stdout, out.stderr[-2000:]


def test_a_typed_payload_refuses_what_its_shape_does_not_declare(redis_client) -> None:
    # notify_admin's items carry ids and flags: a name or an email is refused at the producer.
    refused = r"argument 'data' at 'AdminItem.email'.*Extra inputs"
    with pytest.raises(InvalidTaskArgumentsError, match=refused):
        emails.notify_admin.delay({"doctor_id": 7, "email": "someone@clinic.example"})
    with pytest.raises(InvalidTaskArgumentsError, match=r"argument 'data' at 'doctor_id'"):
        sync.create_account.delay({"doctor_id": "7", "valid": True, "problems": []})
    assert queued(redis_client) == 0 and not OutboxMessage.objects.exists()
    emails.notify_admin.delay([7, {"doctor_id": 7, "valid": True}])
    assert queued(redis_client) == 1


def test_a_consumer_reads_the_same_shape_tolerantly() -> None:
    # An older worker accepts a key a newer producer added; it still refuses a wrong type.
    newer = {"doctor_id": 7, "valid": True, "problems": [], "checked_by": "v2"}
    sync.create_account.check((newer,), tolerant=True)
    with pytest.raises(InvalidTaskArgumentsError):
        sync.create_account.check((newer,))
    with pytest.raises(InvalidTaskArgumentsError, match="'valid'"):
        sync.create_account.check(({"doctor_id": 7, "valid": "yes", "problems": []},), tolerant=True)

"""A producer that imports no service sends by name; bad calls never reach the broker."""

import time

import pytest
from celery import Celery

from common import calls, catalogue
from common.catalogue import CATALOGUE, SERVICES, InvalidTaskArgumentsError, UnknownTaskError
from common.celery_app import current_app


def queued(redis_client) -> int:  # type: ignore[no-untyped-def]
    """Messages waiting on any service queue (all priority lists included)."""
    return sum(
        redis_client.llen(key)
        for key in redis_client.keys("*")
        if key.decode().split("\x06\x16")[0] in SERVICES and redis_client.type(key) == b"list"
    )


@pytest.fixture(autouse=True)
def empty_queues(redis_client) -> None:  # type: ignore[no-untyped-def]
    redis_client.flushdb()


def test_every_catalogued_task_is_routed_to_its_own_service_queue() -> None:
    routes = current_app().conf.task_routes
    assert set(routes) == set(CATALOGUE.names())
    for contract in CATALOGUE:
        assert routes[contract.name] == {"queue": contract.name.split(".")[0]}


def test_send_by_name_publishes_on_the_consuming_services_queue(redis_client) -> None:  # type: ignore[no-untyped-def]
    calls.delay("payments.process_payment", 42)
    assert redis_client.llen("payments") == 1
    assert queued(redis_client) == 1


def test_unknown_task_name_is_refused_and_nothing_is_published(redis_client) -> None:  # type: ignore[no-untyped-def]
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
def test_arguments_not_matching_the_catalogue_are_refused(redis_client, args, kwargs, problem) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidTaskArgumentsError) as err:
        catalogue.send_welcome_email.apply_async(args, kwargs)
    assert "emails.send_welcome_email(doctor_id: int)" in str(err.value)
    assert problem in str(err.value)
    assert queued(redis_client) == 0


def test_canvas_signatures_are_checked_leaving_the_chained_argument_open() -> None:
    step = calls.signature("sync.create_account")  # `data` comes from the previous step
    assert step.task == "sync.create_account"
    with pytest.raises(InvalidTaskArgumentsError):
        calls.signature("sync.create_account", immutable=True)
    with pytest.raises(InvalidTaskArgumentsError):
        catalogue.send_welcome_email.s("not-an-id")


def test_unreachable_broker_gives_an_actionable_error_quickly() -> None:
    from common.celery_config import celery_config
    from common.ports import free_port
    from common.settings import load_settings

    dead = Celery("dead")
    dead.conf.update(celery_config(load_settings(redis_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")))
    started = time.monotonic()
    with pytest.raises(calls.BrokerUnavailableError) as err:
        calls.apply_async("emails.send_welcome_email", (1,), app=dead)
    message = str(err.value)
    assert "unreachable" in message and "REDIS_URL" in message and "not sent" in message
    assert "s3cret" not in message
    assert time.monotonic() - started < 60  # bounded by the publish retry policy, not forever

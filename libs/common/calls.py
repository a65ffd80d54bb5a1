"""Sending tasks by name: checked against the catalogue, routed by the one table.

This is how a producer (the web side, beat, or another service) calls a service it
must not import. A call that names no known task, or whose arguments do not fit the
declaration, raises before anything is published; an unreachable broker raises
`BrokerUnavailableError` naming the URL rather than hanging or losing the task.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Signature
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.catalogue import CATALOGUE, InvalidTaskArgumentsError, TaskContract
from common.celery_app import current_app
from common.redaction import redact_url


class BrokerUnavailableError(ConnectionError):
    """The broker could not be reached; the task was not published."""


def contract(name: str | TaskContract) -> TaskContract:
    return name if isinstance(name, TaskContract) else CATALOGUE.get(name)


def apply_async(
    name: str | TaskContract,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    app: Celery | None = None,
    **options: Any,
) -> AsyncResult:
    """`Task.apply_async` for a task this process does not import."""
    c = contract(name)
    c.check(tuple(args), kwargs)
    app = app or current_app()
    try:
        return app.send_task(c.name, args=list(args), kwargs=kwargs or {}, **options)
    except (OperationalError, RedisConnectionError, RedisTimeoutError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "result store" not in str(exc):
            raise  # only the Redis result backend's "cannot reconnect" is a broker outage
        raise BrokerUnavailableError(
            f"Could not publish {c.name}: broker at {redact_url(app.conf.broker_url)} "
            f"is unreachable ({type(exc).__name__}). Is Redis running and REDIS_URL right? "
            "The task was not sent."
        ) from exc


def delay(name: str | TaskContract, *args: Any, **kwargs: Any) -> AsyncResult:
    return apply_async(name, args, kwargs)


def signature(
    name: str | TaskContract,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    immutable: bool = False,
    app: Celery | None = None,
    **options: Any,
) -> Signature:
    """A canvas signature (for chain/group/chord) of a task named in the catalogue.

    A mutable signature may leave its first parameter open: in a chain, Celery
    passes the previous step's result there.
    """
    c = contract(name)
    args = tuple(args)
    try:
        c.check(args, kwargs)
    except InvalidTaskArgumentsError:
        if immutable or not c.parameters:
            raise
        _check_with_parent_result(c, args, kwargs)
    app = app or current_app()
    return app.signature(c.name, args=args, kwargs=kwargs or {}, immutable=immutable, **options)


def _check_with_parent_result(c: TaskContract, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
    first = c.parameters[0]
    if kwargs and first in kwargs:
        raise InvalidTaskArgumentsError(
            f"{c.name}{c.signature}: {first!r} is filled by the previous step; do not pass it"
        )
    try:
        bound = c.signature.bind(None, *args, **(kwargs or {}))
    except TypeError as exc:
        raise InvalidTaskArgumentsError(f"{c.name}{c.signature}: {exc}") from None
    rest = dict(bound.arguments)
    rest.pop(first)
    c.check((), rest, partial=True)

"""A task failure is reported whatever shape its arguments have.

Through Celery's own tracer (`Task.apply`), which sends `task_failure` with the request's
args and kwargs as they came: a dict, a string, None, a number. A handler that raised on
them would lose the report (Celery logs the handler's error instead of the task's).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import task_failure

from common.observability.reporting import handle_task_failure


@pytest.fixture
def boom() -> Iterator[Any]:
    app = Celery("failure-reporting-test", set_as_current=False)

    @app.task(name="tests.boom", shared=False)
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom for ann@example.com")

    task_failure.connect(handle_task_failure, sender=boom, weak=False, dispatch_uid="test.failure")
    try:
        yield boom
    finally:
        task_failure.disconnect(sender=boom, dispatch_uid="test.failure")


def failures(caplog: pytest.LogCaptureFixture, task_id: str) -> list[logging.LogRecord]:
    # The session's apps may have installed the same handler for every task: the same record twice.
    return [r for r in caplog.records if r.name == "common.task_failure" and r.task_id == task_id]


@pytest.mark.parametrize(
    ("args", "kwargs", "shown_args", "shown_kwargs"),
    [
        (["ann@example.com", 2], {"email": "ann@example.com"}, ["[email]", 2], {"email": "[redacted]"}),
        ({"email": "ann@example.com"}, None, {"email": "[redacted]"}, {}),  # a dict where a list belongs
        ("ann@example.com", None, "[email]", {}),  # a string is not split into characters
        (7, None, 7, {}),  # not iterable at all
        ((1, 2), {}, [1, 2], {}),
    ],
    ids=["list", "dict", "string", "number", "tuple"],
)
def test_a_failure_is_reported_whatever_the_argument_shapes(
    boom: Any, caplog: pytest.LogCaptureFixture, args: Any, kwargs: Any, shown_args: Any, shown_kwargs: Any
) -> None:
    caplog.set_level(logging.ERROR)
    result = boom.apply(args=args, kwargs=kwargs)
    assert result.failed()
    [record, *_] = failures(caplog, result.id)
    assert record.task_name == "tests.boom"
    assert record.task_args == shown_args and record.task_kwargs == shown_kwargs
    assert "ann@example.com" not in record.getMessage()
    assert not [r for r in caplog.records if "Signal handler" in r.getMessage()], "the handler raised"


@pytest.mark.parametrize(("kwargs", "shown"), [(["ann@example.com"], ["[email]"]), ("x", "x"), (3, 3)])
def test_kwargs_that_are_no_mapping_are_reported_as_they_came(
    caplog: pytest.LogCaptureFixture, kwargs: Any, shown: Any
) -> None:
    # Celery's tracer refuses these before the task runs; another caller of the handler may not.
    caplog.set_level(logging.ERROR)
    handle_task_failure(sender=None, task_id="t1", exception=RuntimeError("x"), args=None, kwargs=kwargs)
    [record, *_] = failures(caplog, "t1")
    assert record.task_kwargs == shown


def test_an_exception_that_cannot_be_printed_is_still_reported(caplog: pytest.LogCaptureFixture) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

        def __repr__(self) -> str:
            raise ValueError("no")

    caplog.set_level(logging.ERROR)
    handle_task_failure(sender=None, task_id="t1", exception=Unprintable(), args=None, kwargs=None)
    [record, *_] = failures(caplog, "t1")
    assert "<unprintable Unprintable>" in record.exception


def test_one_receiver_runs_every_failure_hook_in_order_and_a_raising_one_stops_none() -> None:
    """Three modules connected a receiver each; their order was the order of imports."""
    from celery.signals import task_failure

    from common.celery_app import create_app
    from common.deadletters import failures
    from common.observability import failure_hooks, recent_failures, reporting

    create_app("sync")  # what a worker service installs
    ours = [key for key, _ in task_failure.receivers if str(key[0]).startswith("common.")]
    assert len(ours) == 1, task_failure.receivers
    hooks = failure_hooks.FAILURE_HOOKS
    assert hooks.index(reporting.handle_task_failure) < hooks.index(failures.keep_final_failure)
    assert hooks.index(failures.keep_final_failure) < hooks.index(recent_failures.record_failure)

    ran: list[str] = []

    def broken(**_: object) -> None:
        ran.append("broken")
        raise RuntimeError("a hook's own bug")

    def after(**_: object) -> None:
        ran.append("after")

    saved = list(hooks)
    hooks[:] = [broken, after]
    try:
        failure_hooks.on_task_failure(sender=None, task_id="t1", exception=ValueError("x"))
    finally:
        hooks[:] = saved
    assert ran == ["broken", "after"]

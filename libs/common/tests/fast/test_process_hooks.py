"""The one ordered list of process hooks (common.process_hooks): its order, what each kind of
process installs, that every app gets its hooks from it (a producer-only one made below the
list included), and that installing the whole list twice connects each receiver once."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from celery.utils.dispatch import Signal
from celery.worker.control import Panel
from django.core.exceptions import ImproperlyConfigured

from common import celery_base, process_hooks
from common.celery_app import create_app
from common.masking import TRACE_LOGGER, HideTaskResultsFilter
from common.observability import failure_hooks, recent_failures, reporting
from common.process_hooks import HOOKS, Scope, hooks_for, install
from common.transport.dead_letter_store import dead_lettered
from common.worker_status import ReleaseInfo

EVERY_APP = ["db_connection_reuse", "error_reporting", "canvas_outbox"]
SERVICE = ["dead_letters", "recent_failures", "revoked_state"]
RUN = [
    "scheduled_inspect",
    "remote_control",
    "hidden_task_results",
    "json_logs",
    "metrics",
    "release_info",
    "exit_status",
]


def names(hooks: list[process_hooks.Hook]) -> list[str]:
    return [hook.name for hook in hooks]


def test_each_kind_of_process_installs_its_hooks_in_one_order() -> None:
    print("\nworker:", " > ".join(names(hooks_for("worker"))))
    assert names(hooks_for("producer")) == EVERY_APP
    assert names(hooks_for("service")) == EVERY_APP + SERVICE
    assert names(hooks_for("worker")) == EVERY_APP + SERVICE + RUN
    assert names(list(HOOKS)) == EVERY_APP + SERVICE + RUN  # no hook outside the three kinds


def test_a_group_of_hooks_comes_after_the_groups_installed_before_it() -> None:
    """configured_app, then create_app, then run_worker: the list is in that order too."""
    scopes = [hook.scope for hook in HOOKS]
    assert scopes == sorted(scopes)
    assert len({hook.name for hook in HOOKS}) == len(HOOKS)


def test_every_app_runs_the_list_s_every_app_hooks_a_producer_made_below_it_too() -> None:
    """celery_base (below the list) runs what the list handed it, in the list's order."""
    assert celery_base.app_hooks() == [hook.install for hook in hooks_for("producer")]
    celery_base.current_app()  # the producer-only app sending and the outbox relay use
    assert any(key[0] == "common.db_connections.pre" for key, _ in signals.task_prerun.receivers)
    assert failure_hooks.FAILURE_HOOKS[0] is reporting.handle_task_failure  # reported first


def test_an_app_is_refused_where_the_list_never_handed_its_hooks_down() -> None:
    """Django settings without `common` would make apps that report nothing: refused, loudly."""
    saved = celery_base.app_hooks()
    celery_base.set_app_hooks([])
    try:
        with pytest.raises(ImproperlyConfigured, match="INSTALLED_APPS"):
            celery_base.configured_app("hookless")
    finally:
        celery_base.set_app_hooks(saved)
    assert "hookless" not in celery_base._apps


def every_signal() -> list[Signal]:
    found = [value for value in vars(signals).values() if isinstance(value, Signal)]
    return [*found, dead_lettered]


def receivers() -> dict[str, list[Any]]:
    """Each signal's receivers by lookup key: a receiver connected twice shows up twice."""
    return {str(signal.name): [key for key, _ in signal.receivers] for signal in every_signal()}


@pytest.fixture
def worker_app() -> Iterator[Celery]:
    """A queue service's app; Celery's remote control registry restored afterwards."""
    panel = dict(Panel.data)
    app = create_app("sync")
    app.conf.worker_pool = "threads"
    try:
        yield app
    finally:
        Panel.data.clear()
        Panel.data.update(panel)


def test_installing_every_hook_twice_connects_each_receiver_once(worker_app: Celery) -> None:
    for scope in Scope:
        install(worker_app, scope)
    first, panel, steps = receivers(), dict(Panel.data), set(worker_app.steps["worker"])
    hooks = list(failure_hooks.FAILURE_HOOKS)
    filters = list(logging.getLogger(TRACE_LOGGER).filters)  # Django's dictConfig adds one too

    for hook in HOOKS:  # the whole list again, each hook straight
        hook.install(worker_app)

    again = receivers()
    print("\nreceivers connected:", {name: len(keys) for name, keys in again.items() if keys})
    assert again == first
    assert Panel.data == panel  # the same handlers, refused commands included: nothing re-wrapped
    assert set(worker_app.steps["worker"]) == steps and ReleaseInfo in steps
    assert failure_hooks.FAILURE_HOOKS == hooks
    assert hooks.count(recent_failures.record_failure) == 1
    ours = [key for key in again["task_failure"] if str(key[0]).startswith("common.task_failure")]
    assert len(ours) == 1, again["task_failure"]
    assert logging.getLogger(TRACE_LOGGER).filters == filters
    assert any(isinstance(f, HideTaskResultsFilter) for f in filters)
    assert Panel.data["shutdown"].__name__ == "refuse"  # the worker run's policy is on

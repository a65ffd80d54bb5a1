"""Business outcomes are told apart from failures by the task's own `throws`."""

from __future__ import annotations

from celery import Celery
from celery.exceptions import Ignore, Reject

from common.observability.metrics import TaskMetrics
from common.observability.outcomes import is_outcome


class Declined(Exception):
    pass


def tasks() -> tuple:
    app = Celery("outcomes-probe", set_as_current=False)

    @app.task(name="probe.charge", throws=(Declined,))
    def charge() -> None: ...

    @app.task(name="probe.plain")
    def plain() -> None: ...

    return charge, plain


def test_declared_throws_reject_and_ignore_are_outcomes_other_errors_are_not() -> None:
    charge, plain = tasks()
    assert is_outcome(charge, Declined("card_declined"))
    assert not is_outcome(charge, ValueError("bug"))
    assert not is_outcome(plain, Declined("card_declined"))
    assert is_outcome(plain, Reject("no", requeue=False)) and is_outcome(plain, Ignore())
    assert not is_outcome(plain, None)


def test_an_outcome_counts_as_rejected_not_failed(tmp_path, monkeypatch) -> None:
    from prometheus_client import CollectorRegistry, values
    from prometheus_client.multiprocess import MultiProcessCollector

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    charge, plain = tasks()
    metrics = TaskMetrics("probe")
    metrics._on_failure(sender=charge, exception=Declined("card_declined"))
    metrics._on_failure(sender=charge, exception=ValueError("bug"))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    got = {
        (s.name, s.labels.get("task"), s.labels.get("exception")): s.value
        for f in registry.collect()
        for s in f.samples
    }
    assert got[("celery_task_rejected_total", "probe.charge", None)] == 1
    assert got[("celery_task_failed_total", "probe.charge", "ValueError")] == 1
    assert ("celery_task_failed_total", "probe.charge", "Declined") not in got

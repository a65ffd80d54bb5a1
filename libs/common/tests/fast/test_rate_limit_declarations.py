"""Declaring a shared rate limit: the "N/s" / "N/m" rates, a contract's `RateLimit`, and a
limited task body as Celery sees it. The limiter's decisions run in Redis
(`libs/common/tests/test_rate_limits.py`)."""

from __future__ import annotations

import pytest
from celery import Celery

from common.celery_app import implements
from common.transport.limited_tasks import contract_limit
from common.transport.rate_limits import RateLimited
from contracts.declare import Rate, RateLimit, ServiceContracts, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [("5/s", Rate(5, 1)), ("100/m", Rate(100, 60)), (" 12 / M ", Rate(12, 60)), ("1/S", Rate(1, 1))],
)
def test_a_rate_is_n_per_second_or_per_minute(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate
    assert parse_rate(str(rate)) == rate


@pytest.mark.parametrize(
    "text", ["", "5", "0/s", "-1/s", "5/h", "5/sec", "1.5/s", "five/s", "5/s/s", "9" * 12 + "/s"]
)
def test_anything_else_is_refused_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="write N/s or N/m"):
        parse_rate(text)


def test_a_contract_declares_a_limit_per_parameter() -> None:
    service = ServiceContracts("ratelimitprobe")

    @service.task(rate_limit=RateLimit("10/s", concurrency=2, per="doctor_id"))
    def push(doctor_id: int) -> None:
        """Probe."""

    @service.task
    def plain(doctor_id: int) -> None:
        """Probe."""

    assert push.rate_limit == RateLimit("10/s", 2, "doctor_id") and plain.rate_limit is None
    limit = contract_limit(push)
    assert limit is not None and (limit.name, limit.rate, limit.concurrency) == (
        "ratelimitprobe.push",
        Rate(10, 1),
        2,
    )
    assert contract_limit(plain) is None


def test_a_limit_that_cannot_work_is_refused_where_it_is_declared() -> None:
    service = ServiceContracts("ratelimitprobe")
    with pytest.raises(ValueError, match="names no parameter"):

        @service.task(rate_limit=RateLimit("1/s", per="patient_id"))
        def push(doctor_id: int) -> None:
            """Probe."""

    for bad in ({}, {"rate": "1/hour"}, {"concurrency": 0}, {"rate": "1/s", "concurrency": True}):
        with pytest.raises(ValueError):
            RateLimit(**bad)


def test_a_task_body_keeps_its_signature_and_a_direct_call_over_a_limit_raises() -> None:
    """Celery checks arguments against the body's signature; outside a worker, nothing to defer."""
    service = ServiceContracts("ratelimitprobe")

    @service.task
    def call(doctor_id: int) -> None:
        """Probe."""

    app = Celery("ratelimitprobe", set_as_current=False)

    @implements(app, call)
    def body(doctor_id: int) -> None:
        raise RateLimited("crm", 123)

    body.__header__(1)  # Celery's own argument check (`apply_async` with typing on) sees (doctor_id)
    with pytest.raises(TypeError):
        body.__header__(1, 2)
    with pytest.raises(RateLimited):
        body(7)

"""PAYMENT_GATEWAY_RATE_LIMIT on a real payments worker and the gateway sandbox (issue 22.2).

A payment over the limit hands its claim back and waits in the delayed set, so its Payment
row is never left `processing` (the delivery after the wait would answer `in_progress` and
never charge), and its attempts count only charges sent.
Prints the most charges the gateway saw in any 1 s window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.models import Appointment, Payment
from contracts import payments
from devtools.testing.waiting import max_in_any_window
from devtools.testing.workers import Workers

LIMIT = 2  # per second
PAYMENTS = 8


@pytest.fixture
def limited_worker(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    w = Workers(data_dir / "gateway-limit")
    (data_dir / "gateway-limit").mkdir(exist_ok=True)
    w.start(["payments"], env={"payments": {**peers_env, "PAYMENT_GATEWAY_RATE_LIMIT": f"{LIMIT}/s"}})
    yield w
    w.stop()


def test_payments_over_the_gateway_limit_wait_and_are_each_charged_once(
    limited_worker: Workers, gateway_sandbox, make_appointment: Callable[..., Appointment]
) -> None:
    appointments = [make_appointment() for _ in range(PAYMENTS)]
    first = len(gateway_sandbox.requests)
    results = [payments.process_payment.delay(a.pk) for a in appointments]
    outcomes = [r.get(timeout=90) for r in results]
    charges = [
        r for r in gateway_sandbox.requests[first:] if r["method"] == "POST" and r["path"] == "/v1/charges"
    ]
    seen = max_in_any_window([r["at"] for r in charges])
    span = max(r["at"] for r in charges) - min(r["at"] for r in charges)
    print(
        f"\nPAYMENT_GATEWAY_RATE_LIMIT={LIMIT}/s, {PAYMENTS} payments: {len(charges)} charges "
        f"over {span:.1f} s, max {seen} in any 1 s window"
    )
    assert [o["status"] for o in outcomes] == ["success"] * PAYMENTS
    assert len(charges) == PAYMENTS, "one charge per payment"
    assert seen <= LIMIT
    assert {p.status for p in Payment.objects.filter(appointment__in=appointments)} == {
        Payment.Status.SUCCEEDED
    }
    assert {p.attempts for p in Payment.objects.filter(appointment__in=appointments)} == {1}

"""Idempotency keys and the gateway's answer, in process (issue 21 item 9): fast, no workers.

The task runs eagerly in this process against the HTTP gateway sandbox and the test
session's PostgreSQL database; test_payments_worker.py runs the same rules with real workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
import requests
from django.db import connection
from django.utils import timezone

from common.models import Appointment, Payment
from payments import gateway, tasks


@pytest.fixture
def sandbox(gateway_sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The gateway client of this process pointed at the session's sandbox."""
    monkeypatch.setattr(gateway, "_base_and_headers", lambda: (gateway_sandbox.url, {}, 10.0))
    yield gateway_sandbox


def run(appt: Appointment) -> Any:
    """One delivery of process_payment, run here; its result (or the exception it failed with)."""
    outcome = tasks.process_payment.apply(args=(appt.pk,))
    return outcome.result


def posts_under(sandbox: Any, key: str) -> list[dict]:
    return [
        r for r in sandbox.requests if r["method"] == "POST" and r["headers"].get("Idempotency-Key") == key
    ]


def seed_charge(sandbox: Any, key: str, *, amount: str, customer: str, currency: str = "EUR") -> str:
    reply = requests.post(
        f"{sandbox.url}/v1/charges",
        json={"amount": amount, "currency": currency, "customer": customer},
        headers={"Idempotency-Key": key},
        timeout=10,
    )
    reply.raise_for_status()
    return str(reply.json()["id"])


def make_stale(appt: Appointment) -> None:
    """As if the worker that claimed the payment died long ago."""
    Payment.objects.filter(appointment=appt).update(updated_at=timezone.now() - timedelta(minutes=10))


def test_keys_are_random_and_fit_the_column() -> None:
    keys = {Payment.new_idempotency_key(7) for _ in range(5000)}
    assert len(keys) == 5000, "no two alike"
    assert all(k.startswith("appointment-7-") and len(k) - len("appointment-7-") == 24 for k in keys)
    assert "appointment-7-1" not in keys
    assert (
        len(Payment.new_idempotency_key(2**63 - 1))
        <= cast(int, Payment._meta.get_field("idempotency_key").max_length)
    )


def test_the_key_is_random_committed_before_the_gateway_is_called_and_sent_as_stored(
    sandbox: Any, make_appointment: Callable[..., Appointment], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str, bool, str]] = []
    real_charge = gateway.charge

    def spy(**kwargs: Any) -> gateway.Charge:
        payment = Payment.objects.get(idempotency_key=kwargs["idempotency_key"])
        seen.append(
            (payment.status, payment.idempotency_key, connection.in_atomic_block, kwargs["customer_id"])
        )
        return real_charge(**kwargs)

    monkeypatch.setattr(gateway, "charge", spy)
    first, second = make_appointment(), make_appointment()
    assert run(first)["status"] == "success" and run(second)["status"] == "success"
    [(status, key, in_transaction, customer), (_, other_key, _, _)] = seen
    assert status == "processing" and not in_transaction, "committed, no transaction held over the call"
    assert customer == "cus_ok"
    payment = Payment.objects.get(appointment=first)
    assert payment.idempotency_key == key and [
        r["headers"]["Idempotency-Key"] for r in posts_under(sandbox, key)
    ] == [key]
    assert key != f"appointment-{first.pk}-1" and key != other_key
    assert (payment.gateway_customer_id, payment.status) == ("cus_ok", "succeeded")


def test_a_duplicate_delivery_reuses_the_stored_key_and_charges_once(
    sandbox: Any, make_appointment: Callable[..., Appointment]
) -> None:
    appt = make_appointment()
    claim = tasks._claim(appt.pk)
    assert isinstance(claim, tasks.Claim)
    # A duplicate while that claim is fresh leaves the gateway alone.
    assert run(appt) == {"status": "in_progress", "payment_id": None}
    # The first delivery's request reached the gateway, then its worker died: nothing recorded.
    lost = gateway.charge(
        amount=claim.amount, currency=claim.currency, customer_id=claim.customer_id, idempotency_key=claim.key
    )
    make_stale(appt)
    assert run(appt) == {"status": "success", "payment_id": lost.id}
    assert [c["id"] for c in sandbox.charges if c["idempotency_key"] == claim.key] == [lost.id]
    assert len(posts_under(sandbox, claim.key)) == 2, "the duplicate sent the stored key again"
    payment = Payment.objects.get(appointment=appt)
    assert (payment.idempotency_key, payment.attempts, payment.status) == (claim.key, 2, "succeeded")
    before = len(sandbox.requests)
    assert run(appt) == {"status": "already_paid", "payment_id": lost.id}
    assert len(sandbox.requests) == before


def test_a_new_attempt_after_a_decline_gets_a_new_stored_key(
    sandbox: Any, make_appointment: Callable[..., Appointment]
) -> None:
    appt = make_appointment(customer="cus_decline_fast")
    assert isinstance(run(appt), gateway.PaymentDeclinedError)
    first = Payment.objects.get(appointment=appt)
    assert isinstance(run(appt), gateway.PaymentDeclinedError)
    second = Payment.objects.get(appointment=appt)
    assert second.idempotency_key != first.idempotency_key and second.key_number == 2
    assert [len(posts_under(sandbox, k)) for k in (first.idempotency_key, second.idempotency_key)] == [1, 1]


def test_an_answer_for_another_amount_or_customer_is_refused(
    sandbox: Any,
    gateway_kind: str,
    make_appointment: Callable[..., Appointment],
    caplog: pytest.LogCaptureFixture,
) -> None:
    appt = make_appointment(customer="cus_fast_mine", amount="250.00")
    claim = tasks._claim(appt.pk)
    assert isinstance(claim, tasks.Claim)
    # Under the payment's own key the gateway already holds another customer's 10.00 charge.
    other = seed_charge(sandbox, claim.key, amount="10.00", customer="cus_fast_other")
    make_stale(appt)
    with caplog.at_level(logging.INFO):
        failed = run(appt)
    assert isinstance(failed, tasks.ChargeMismatchError), failed
    payment = Payment.objects.get(appointment=appt)
    appt.refresh_from_db()
    assert (appt.is_paid, appt.payment_id, appt.payment_status) == (False, "", "failed")
    assert (payment.status, payment.gateway_payment_id) == ("mismatch", "")
    if gateway_kind == "replaying":  # the gateway answered with the other charge: our check refused it
        assert other in payment.last_error
        assert "amount differs (gateway 10.00, payment 250.00)" in payment.last_error
        assert "customer differs" in payment.last_error
    else:  # Stripe refused the key for other parameters
        assert "refused the idempotency key" in payment.last_error
    assert str(failed).startswith(f"appointment {appt.pk}: ") and payment.last_error in str(failed)
    # Nothing personal in what an operator and the logs see.
    for text in (payment.last_error, str(failed), caplog.text):
        assert "cus_fast" not in text
    # Not retried, and no later delivery charges it: it waits for an operator.
    before = len(sandbox.requests)
    again = run(appt)
    assert isinstance(again, tasks.ChargeMismatchError) and "marked mismatch" in str(again)
    assert len(sandbox.requests) == before
    assert [c["id"] for c in sandbox.charges if c["idempotency_key"] == claim.key] == [other]


@pytest.mark.parametrize(
    ("answer", "problems"),
    [
        ({"amount": "250.00", "currency": "EUR", "customer": "cus_a"}, []),
        ({"amount": "250", "currency": "eur", "customer": "cus_a"}, []),  # same amount, Stripe's case
        ({"amount": "250.00", "currency": None, "customer": "cus_a"}, []),  # no currency: not checked
        (
            {"amount": "10.00", "currency": "EUR", "customer": "cus_a"},
            ["amount differs (gateway 10.00, payment 250.00)"],
        ),
        (
            {"amount": "250.00", "currency": "USD", "customer": "cus_a"},
            ["currency differs (gateway USD, payment EUR)"],
        ),
        ({"amount": "250.00", "currency": "EUR", "customer": "cus_b"}, ["customer differs"]),
        (
            {"amount": None, "currency": "EUR", "customer": None},
            ["the gateway's answer has no amount", "the gateway's answer names no customer"],
        ),
    ],
)
def test_the_answer_must_name_the_amount_and_customer_asked_for(answer: dict, problems: list[str]) -> None:
    amount = Decimal(answer["amount"]) if answer["amount"] is not None else None
    charge = gateway.Charge(
        id="ch_1", amount=amount, currency=answer["currency"], customer=answer["customer"]
    )
    assert (
        gateway.mismatches(charge, amount=Decimal("250.00"), currency="EUR", customer_id="cus_a") == problems
    )


def test_the_sandbox_honours_keys_like_stripe(sandbox: Any) -> None:
    key = Payment.new_idempotency_key(1)
    first = requests.post(
        f"{sandbox.url}/v1/charges",
        json={"amount": "5.00", "currency": "EUR", "customer": "cus_s"},
        headers={"Idempotency-Key": key},
        timeout=10,
    )
    assert first.status_code == 200
    assert {k: first.json()[k] for k in ("amount", "currency", "customer", "status")} == {
        "amount": "5.00",
        "currency": "EUR",
        "customer": "cus_s",
        "status": "succeeded",
    }
    replay = requests.post(
        f"{sandbox.url}/v1/charges",
        json={"amount": "5.00", "currency": "EUR", "customer": "cus_s"},
        headers={"Idempotency-Key": key},
        timeout=10,
    )
    assert replay.json() == first.json()
    other = requests.post(
        f"{sandbox.url}/v1/charges",
        json={"amount": "6.00", "currency": "EUR", "customer": "cus_s"},
        headers={"Idempotency-Key": key},
        timeout=10,
    )
    assert other.status_code == 400 and other.json()["type"] == "idempotency_error"
    assert [c["idempotency_key"] for c in sandbox.charges].count(key) == 1

"""Fixtures shared by the payments tests: appointments to charge, straight into the database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # conftest loads before the test plugin has set Django up
    from common.models import Appointment


@pytest.fixture
def make_appointment() -> Callable[..., Appointment]:
    from common.models import Appointment, Doctor, Patient

    def make(customer: str = "cus_ok", amount: str = "80.00", currency: str = "EUR") -> Appointment:
        n = Doctor.objects.count()
        doctor = Doctor.objects.create(first_name="Doc", last_name=f"Tor{n}", email=f"doc{n}@clinic.example")
        patient = Patient.objects.create(
            name="Pat", email=f"pat{n}@mail.example", gateway_customer_id=customer
        )
        return Appointment.objects.create(
            doctor=doctor,
            patient=patient,
            amount=Decimal(amount),
            currency=currency,
            scheduled_at=datetime.now(UTC),
        )

    return make


@pytest.fixture(params=["stripe-like", "replaying"])
def gateway_kind(request: pytest.FixtureRequest, gateway_sandbox) -> Iterator[str]:
    """The gateway sandbox as Stripe (a key reused with other parameters is refused, HTTP 400)
    and as a laxer gateway that replays a key's first answer whatever is asked."""
    gateway_sandbox.replay_mismatched = request.param == "replaying"
    try:
        yield request.param
    finally:
        gateway_sandbox.replay_mismatched = False

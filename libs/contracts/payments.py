"""The payments service's tasks: charging appointments exactly once."""

from __future__ import annotations

from typing import Any

from contracts.declare import ServiceContracts

SERVICE = ServiceContracts("payments")


@SERVICE.task
def process_payment(appointment_id: int) -> dict[str, Any]:
    """Charge an appointment exactly once, however often the task is delivered."""


@SERVICE.task
def reconcile_payments() -> dict[str, Any]:
    """Every 300 s: settle payments a crash left pending/processing by asking the gateway by key."""

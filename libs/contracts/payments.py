"""The payments service's tasks: charging appointments exactly once."""

from __future__ import annotations

from contracts.declare import ServiceContracts

SERVICE = ServiceContracts("payments")


@SERVICE.task
def process_payment(appointment_id: int) -> dict:
    """Charge an appointment exactly once, however often the task is delivered."""


@SERVICE.task
def reconcile_payments() -> dict:
    """Every 300 s: settle payments a crash left pending/processing by asking the gateway by key."""

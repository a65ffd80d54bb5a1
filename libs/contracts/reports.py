"""The reports service's tasks: long report builds that publish their progress."""

from __future__ import annotations

from typing import Any

from contracts.declare import ServiceContracts

SERVICE = ServiceContracts("reports")


@SERVICE.task
def generate_large_report(report_id: int) -> dict[str, Any]:
    """Build a report file, publishing PROGRESS as it goes."""


@SERVICE.task
def generate_weekly_report() -> dict[str, Any]:
    """Monday 09:00 job: create and build the weekly appointments report."""

"""The sync service's tasks: the doctors' records in the external CRM."""


from typing import Any

from typing_extensions import TypedDict

from contracts.declare import ServiceContracts

SERVICE = ServiceContracts("sync")


class DoctorCheck(TypedDict):
    """`validate_doctor`'s verdict, the onboarding chain's input to `create_account`."""

    doctor_id: int
    valid: bool
    problems: list[str]


@SERVICE.task
def validate_doctor(doctor_id: int) -> dict[str, Any]:
    """Check a doctor's record is complete enough to onboard; returns a `DoctorCheck`."""


@SERVICE.task
def create_account(data: DoctorCheck) -> dict[str, Any]:
    """Onboarding-chain step: create the doctor's CRM account if `data` says it is valid."""


@SERVICE.task
def sync_doctor_to_external_system(doctor_id: int) -> dict[str, Any]:
    """Push one doctor to the CRM, retrying with backoff on request errors."""


@SERVICE.task
def sync_all_doctors() -> dict[str, Any]:
    """Hourly job: fan out one sync per doctor, at most one run at a time."""


@SERVICE.task
def echo(value: int) -> int:
    """Round-trip probe through the sync queue (latency checks, the benchmark)."""


@SERVICE.task
def health_check() -> dict[str, Any]:
    """Every 300 s: check the broker and database answer."""

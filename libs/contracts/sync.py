"""The sync service's tasks: the doctors' records in the external CRM."""


from typing import Any

from typing_extensions import TypedDict

from contracts.declare import ServiceContracts, Unique

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


# A burst of edits to one doctor queues one sync; an edit while it runs queues one more.
# The key outlives a stopped queue by at most 10 minutes: a send after that queues again.
@SERVICE.task(unique=Unique(on=("doctor_id",), until="start", seconds=600))
def sync_doctor_to_external_system(doctor_id: int) -> dict[str, Any]:
    """Push one doctor to the CRM, retrying with backoff on request errors; queued once per doctor."""


@SERVICE.task
def sync_all_doctors() -> dict[str, Any]:
    """Hourly job: fan out one sync per doctor, at most one run at a time."""


@SERVICE.task
def echo(value: int) -> int:
    """Round-trip probe through the sync queue (latency checks, the benchmark)."""


@SERVICE.task(unique=Unique(on=("key",), until="finish", seconds=5, debounce=0.3))
def probe_unique(key: int, value: int, hold_ms: int = 0) -> int:
    """Uniqueness probe: one run per `key` until it ends, the last of a 300 ms burst wins;
    returns `value` after `hold_ms` (at most 30 s). For the uniqueness tests and the bench."""


@SERVICE.task
def health_check() -> dict[str, Any]:
    """Every 300 s: check the broker and database answer."""

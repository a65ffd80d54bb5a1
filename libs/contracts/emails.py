"""The emails service's tasks: mail to doctors, patients and the platform admin.

Payloads carry ids and flags, never a name or an email: the worker loads those from the
database, so the broker, results and dead letters hold no personal data.
"""


from typing import Any, NotRequired

from typing_extensions import TypedDict

from contracts.declare import ServiceContracts

SERVICE = ServiceContracts("emails")


class OnboardingStep(TypedDict):
    """The onboarding chain's running record (from `sync.create_account`): ids and flags."""

    doctor_id: int
    valid: NotRequired[bool]
    problems: NotRequired[list[str]]
    account_created: NotRequired[bool]
    external_id: NotRequired[str]


class AdminItem(TypedDict, total=False):
    """One event or task result for the admin's digest: ids, flags and statuses only."""

    event: str
    status: str
    doctor_id: int
    appointment_id: int
    report_id: int
    valid: bool
    problems: list[str]
    account_created: bool
    external_id: str
    email_sent: bool


@SERVICE.task
def send_welcome_email(doctor_id: int) -> dict[str, Any]:
    """Welcome a doctor; sent once per doctor however often it is delivered."""


@SERVICE.task
def send_onboarding_email(data: OnboardingStep) -> dict[str, Any]:
    """Onboarding-chain step: welcome the doctor named by `data["doctor_id"]`."""


@SERVICE.task
def send_appointment_reminder(appointment_id: int) -> dict[str, Any]:
    """Remind the patient of one appointment; once per appointment."""


@SERVICE.task
def send_daily_reminders() -> dict[str, Any]:
    """Daily 08:00 job: fan out one reminder per appointment due in the next day."""


@SERVICE.task
def notify_admin(data: int | AdminItem | list[int | AdminItem]) -> dict[str, Any]:
    """Tell the platform admin about an event (an id, or ids and flags) or a batch of results."""

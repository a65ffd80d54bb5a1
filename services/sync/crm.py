"""HTTP client of the external CRM: timeouts always, credentials from settings."""

from __future__ import annotations

from typing import Any

from common.http import session_for
from common.transport.rate_limits import Limit, limiter
from contracts.declare import parse_rate
from sync.config import get_crm_settings

LIMIT_NAME = "crm"  # the account-wide limit every sync worker shares (CRM_RATE_LIMIT)


class CRMRejectedError(Exception):
    """The CRM refused the record (4xx other than 408/429): retrying cannot help."""


def take_turn() -> None:
    """Take a slot under CRM_RATE_LIMIT (none when unset), or raise `RateLimited`: asked just
    before each request, so the window counted is the one the CRM sees."""
    rate = get_crm_settings().rate_limit
    if rate:
        limiter().acquire(Limit(LIMIT_NAME, parse_rate(rate)))


def upsert_doctor(*, doctor_id: int, name: str, email: str) -> str:
    """Create or update the doctor in the CRM; return the CRM's id for it.

    Over CRM_RATE_LIMIT it raises `RateLimited` before calling: inside a task, the task waits
    in the delayed set for its turn (`common.transport.limited_tasks`).
    """
    s = get_crm_settings()
    headers: dict[str, str] = {"Idempotency-Key": f"doctor-{doctor_id}"}
    token = s.api_token.get_secret_value()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = str(s.url).rstrip("/")
    take_turn()
    response = session_for(base).post(
        f"{base}/api/doctors",
        json={"reference": str(doctor_id), "name": name, "email": email},
        headers=headers,
        timeout=s.timeout,
    )
    if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
        raise CRMRejectedError(f"CRM refused doctor {doctor_id}: HTTP {response.status_code}")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return str(body["id"])

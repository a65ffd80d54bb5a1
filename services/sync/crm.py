"""HTTP client of the external CRM: timeouts always, credentials from settings."""

from __future__ import annotations

from typing import Any

from common.http import session_for
from sync.config import get_crm_settings


class CRMRejectedError(Exception):
    """The CRM refused the record (4xx other than 408/429): retrying cannot help."""


def upsert_doctor(*, doctor_id: int, name: str, email: str) -> str:
    """Create or update the doctor in the CRM; return the CRM's id for it."""
    s = get_crm_settings()
    headers: dict[str, str] = {"Idempotency-Key": f"doctor-{doctor_id}"}
    token = s.api_token.get_secret_value()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = str(s.url).rstrip("/")
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

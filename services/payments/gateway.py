"""The payment gateway interface: one HTTP client, idempotency keys on every charge."""

from __future__ import annotations

from decimal import Decimal

import requests

from common.http import session_for
from common.settings import get_settings


class PaymentDeclinedError(Exception):
    """The gateway declined the charge: final, never retried."""


class PaymentGatewayError(Exception):
    """The gateway could not answer (network, timeout, 5xx): worth retrying."""


def _base_and_headers() -> tuple[str, dict[str, str], float]:
    s = get_settings()
    headers: dict[str, str] = {}
    key = s.payment_gateway_api_key.get_secret_value()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return str(s.payment_gateway_url).rstrip("/"), headers, s.payment_gateway_timeout


def charge(*, amount: Decimal, currency: str, customer_id: str, idempotency_key: str) -> str:
    """Charge the customer; return the gateway's charge id.

    The same `idempotency_key` always yields the same charge, so a retry after a lost
    response cannot charge twice.
    """
    base, headers, timeout = _base_and_headers()
    headers["Idempotency-Key"] = idempotency_key
    try:
        response = session_for(base).post(
            f"{base}/v1/charges",
            json={"amount": str(amount), "currency": currency, "customer": customer_id},
            headers=headers,
            timeout=timeout,
        )
    except requests.RequestException as exc:
        raise PaymentGatewayError(f"gateway unreachable: {type(exc).__name__}") from exc
    if response.status_code == 402:
        reason = response.json().get("error", "declined")
        raise PaymentDeclinedError(reason)
    if response.status_code >= 400:
        raise PaymentGatewayError(f"gateway answered HTTP {response.status_code}")
    return str(response.json()["id"])


def find_charge(idempotency_key: str) -> str | None:
    """The id of the charge made under `idempotency_key`, or None if the gateway made none.

    None means no money moved under this key (never received, or declined), so charging
    again with the same key is safe; the key would dedupe it anyway.
    """
    base, headers, timeout = _base_and_headers()
    try:
        response = session_for(base).get(
            f"{base}/v1/charges",
            params={"idempotency_key": idempotency_key},
            headers=headers,
            timeout=timeout,
        )
    except requests.RequestException as exc:
        raise PaymentGatewayError(f"gateway unreachable: {type(exc).__name__}") from exc
    if response.status_code == 404:
        return None
    if response.status_code >= 400:
        raise PaymentGatewayError(f"gateway answered HTTP {response.status_code}")
    return str(response.json()["id"])

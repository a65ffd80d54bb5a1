"""The payment gateway interface: one HTTP client, idempotency keys on every charge."""

from __future__ import annotations

from decimal import Decimal

import requests

from common.settings import get_settings


class PaymentDeclinedError(Exception):
    """The gateway declined the charge: final, never retried."""


class PaymentGatewayError(Exception):
    """The gateway could not answer (network, timeout, 5xx): worth retrying."""


_session = requests.Session()


def charge(*, amount: Decimal, currency: str, customer_id: str, idempotency_key: str) -> str:
    """Charge the customer; return the gateway's charge id.

    The same `idempotency_key` always yields the same charge, so a retry after a lost
    response cannot charge twice.
    """
    s = get_settings()
    headers = {"Idempotency-Key": idempotency_key}
    key = s.payment_gateway_api_key.get_secret_value()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        response = _session.post(
            f"{str(s.payment_gateway_url).rstrip('/')}/v1/charges",
            json={"amount": str(amount), "currency": currency, "customer": customer_id},
            headers=headers,
            timeout=s.payment_gateway_timeout,
        )
    except requests.RequestException as exc:
        raise PaymentGatewayError(f"gateway unreachable: {type(exc).__name__}") from exc
    if response.status_code == 402:
        reason = response.json().get("error", "declined")
        raise PaymentDeclinedError(reason)
    if response.status_code >= 400:
        raise PaymentGatewayError(f"gateway answered HTTP {response.status_code}")
    return str(response.json()["id"])

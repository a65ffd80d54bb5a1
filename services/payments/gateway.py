"""The payment gateway interface: one HTTP client, idempotency keys on every charge.

The gateway's answer is data to check, not to trust: `charge` and `find_charge` return the
`Charge` the gateway says it made (id, amount, currency, customer), and `mismatches` says how
it differs from the charge asked for. A key the gateway refuses as used before with other
parameters (Stripe's `idempotency_error`) is `ChargeMismatchError`, never a retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import requests

from common.http import session_for
from common.transport.rate_limits import Limit, limiter
from contracts.declare import parse_rate
from payments.config import get_payment_settings

LIMIT_NAME = "payment-gateway"  # the account-wide limit every payments worker shares


class PaymentDeclinedError(Exception):
    """The gateway declined the charge: final, never retried."""


class PaymentGatewayError(Exception):
    """The gateway could not answer (network, timeout, 5xx): worth retrying."""


class ChargeMismatchError(Exception):
    """The gateway's charge under our key is not the charge we asked for: never marked paid.

    Raised by `charge` when the gateway refuses the key as already used for other parameters,
    and by `payments.tasks` when its answer names another amount, currency or customer. Not
    retried (the same key gets the same answer): an operator settles it at the gateway.
    """


@dataclass(frozen=True)
class Charge:
    """What the gateway says it charged. A field it did not send is None (and fails `mismatches`)."""

    id: str
    amount: Decimal | None
    currency: str | None
    customer: str | None


def take_turn() -> None:
    """Take a slot under PAYMENT_GATEWAY_RATE_LIMIT (none when unset), or raise `RateLimited`.

    Taken just before each request, so the window counted is the one the gateway sees; a
    charge turned away sends nothing (`payments.tasks.process_payment` then hands its claim
    back, so the payment is never left processing).
    """
    rate = get_payment_settings().gateway_rate_limit
    if rate:
        limiter().acquire(Limit(LIMIT_NAME, parse_rate(rate)))


def _base_and_headers() -> tuple[str, dict[str, str], float]:
    s = get_payment_settings()
    headers: dict[str, str] = {}
    key = s.gateway_api_key.get_secret_value()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return str(s.gateway_url).rstrip("/"), headers, s.gateway_timeout


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {}


def _charge_from(response: requests.Response) -> Charge:
    body = _json(response)
    if not body.get("id"):
        # Whether money moved is unknown: retry under the same key, which finds out.
        raise PaymentGatewayError(f"gateway answered HTTP {response.status_code} without a charge id")
    try:
        amount = Decimal(str(body["amount"])) if body.get("amount") is not None else None
    except InvalidOperation:
        amount = None
    currency, customer = body.get("currency"), body.get("customer")
    return Charge(
        id=str(body["id"]),
        amount=amount if amount is not None and amount.is_finite() else None,
        currency=str(currency) if currency is not None else None,
        customer=str(customer) if customer is not None else None,
    )


def mismatches(charge: Charge, *, amount: Decimal, currency: str, customer_id: str) -> list[str]:
    """How `charge` differs from the charge asked for; [] if it is that charge.

    Amount and customer must be in the answer and equal; the currency must be equal when the
    answer names one (compared case-insensitively: Stripe answers "eur"). The reasons name
    amounts and currencies, never a customer id: they go to logs and the admin.
    """
    problems: list[str] = []
    if charge.amount is None:
        problems.append("the gateway's answer has no amount")
    elif charge.amount != amount:
        problems.append(f"amount differs (gateway {charge.amount}, payment {amount})")
    if charge.currency is not None and charge.currency.upper() != currency.upper():
        problems.append(f"currency differs (gateway {charge.currency.upper()[:8]}, payment {currency})")
    if not charge.customer:
        problems.append("the gateway's answer names no customer")
    elif charge.customer != customer_id:
        problems.append("customer differs")
    return problems


def charge(*, amount: Decimal, currency: str, customer_id: str, idempotency_key: str) -> Charge:
    """Charge the customer; return the charge the gateway says it made (check it: `mismatches`).

    The same `idempotency_key` always yields the same charge, so a retry after a lost
    response cannot charge twice. A key the gateway saw before with other parameters raises
    `ChargeMismatchError`. Over PAYMENT_GATEWAY_RATE_LIMIT it raises `RateLimited`, sending
    nothing (`take_turn`).
    """
    base, headers, timeout = _base_and_headers()
    headers["Idempotency-Key"] = idempotency_key
    take_turn()
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
        reason = _json(response).get("error", "declined")
        raise PaymentDeclinedError(reason)
    if response.status_code == 400 and _json(response).get("type") == "idempotency_error":
        raise ChargeMismatchError(
            "the gateway refused the idempotency key: it was used before for another amount, "
            "currency or customer"
        )
    if response.status_code >= 400:
        raise PaymentGatewayError(f"gateway answered HTTP {response.status_code}")
    return _charge_from(response)


def find_charge(idempotency_key: str) -> Charge | None:
    """The charge made under `idempotency_key`, or None if the gateway made none.

    None means no money moved under this key (never received, or declined), so charging
    again with the same key is safe; the key would dedupe it anyway. Takes its turn under
    PAYMENT_GATEWAY_RATE_LIMIT first (`take_turn`).
    """
    base, headers, timeout = _base_and_headers()
    take_turn()
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
    return _charge_from(response)

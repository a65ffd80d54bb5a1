"""Payment gateway sandbox: records charges, honours idempotency keys like Stripe.

`POST /v1/charges` with an `Idempotency-Key` header and `{"amount", "currency", "customer"}`
answers the charge it made: `{"id", "object": "charge", "amount", "currency", "customer",
"status": "succeeded", "paid": true}`, so a client can check it is the charge it asked for.
Customers whose id starts with `cus_decline` are declined (HTTP 402).

Idempotency as Stripe does it: the first answer under a key (a charge or a decline) is kept
and replayed for every later request under that key with the same parameters; a request
under a known key with other parameters (amount, currency or customer) is refused with HTTP
400 `{"type": "idempotency_error"}` and charges nothing. `replay_mismatched = True` makes the
sandbox a laxer gateway that replays a key's first answer whatever the new request asks for
(what the payments incident of issue 21 ran into): the client's own check is then all that
stands between a booking and another booking's charge.

`GET /v1/charges?idempotency_key=<key>` answers the charge made under a key, or 404 if none
was (never tried, or declined), so a client can settle a charge whose reply it lost.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devtools.sandboxes.http import JSONServer

IDEMPOTENCY_ERROR = {
    "type": "idempotency_error",
    "error": "idempotency_key_reused",
    "message": "Keys for idempotent requests can only be used with the same parameters they were first "
    "used with.",
}


def _params(body: dict[str, Any]) -> tuple[str, str, str]:
    """What a key is bound to. Amounts compare as sent ("80.00"), currencies case-insensitively."""
    return str(body["amount"]), str(body.get("currency", "EUR")).upper(), str(body["customer"])


class GatewaySandbox(JSONServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.charges: list[dict[str, Any]] = []
        self.replay_mismatched = False
        self._by_key: dict[str, tuple[tuple[str, str, str], tuple[int, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        super().__init__(self._handle, host, port)

    def _handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/health":
            return 200, {"status": "ok"}
        url = urlsplit(path)
        if method == "GET" and url.path == "/v1/charges":
            return self._find(parse_qs(url.query).get("idempotency_key", [""])[0])
        if method != "POST" or path != "/v1/charges":
            return 404, {"error": f"no route {method} {path}"}
        key = headers.get("Idempotency-Key")
        if not key:
            return 400, {"error": "Idempotency-Key header is required"}
        if not isinstance(body, dict) or "amount" not in body or "customer" not in body:
            return 400, {"error": "amount and customer are required"}
        params = _params(body)
        with self._lock:
            if key in self._by_key:
                first_params, reply = self._by_key[key]
                if first_params != params and not self.replay_mismatched:
                    return 400, IDEMPOTENCY_ERROR
                return reply
            if params[2].startswith("cus_decline"):
                reply = (402, {"error": "card_declined"})
            else:
                charge = {
                    "id": f"ch_{next(self._ids):06d}",
                    "amount": body["amount"],
                    "currency": body.get("currency", "EUR"),
                    "customer": body["customer"],
                    "idempotency_key": key,
                }
                self.charges.append(charge)
                reply = (200, self._public(charge))
            self._by_key[key] = (params, reply)
            return reply

    @staticmethod
    def _public(charge: dict[str, Any]) -> dict[str, Any]:
        """A charge as the gateway answers it."""
        return {
            "id": charge["id"],
            "object": "charge",
            "amount": charge["amount"],
            "currency": charge["currency"],
            "customer": charge["customer"],
            "status": "succeeded",
            "paid": True,
        }

    def _find(self, key: str) -> tuple[int, Any]:
        if not key:
            return 400, {"error": "idempotency_key is required"}
        with self._lock:
            for charge in self.charges:
                if charge["idempotency_key"] == key:
                    return 200, {**self._public(charge), "idempotency_key": key}
        return 404, {"error": "no charge with this idempotency key"}

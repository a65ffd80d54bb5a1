"""Payment gateway sandbox: records charges, honours idempotency keys like Stripe.

Customers whose id starts with `cus_decline` are declined (HTTP 402).
`GET /v1/charges?idempotency_key=<key>` answers the charge made under a key, or 404 if none
was (never tried, or declined), so a client can settle a charge whose reply it lost.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devtools.sandboxes.http import JSONServer


class GatewaySandbox(JSONServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.charges: list[dict[str, Any]] = []
        self._by_key: dict[str, tuple[int, Any]] = {}
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
        with self._lock:
            if key in self._by_key:
                return self._by_key[key]
            if str(body["customer"]).startswith("cus_decline"):
                reply: tuple[int, Any] = (402, {"error": "card_declined"})
            else:
                charge = {
                    "id": f"ch_{next(self._ids):06d}",
                    "amount": body["amount"],
                    "currency": body.get("currency", "EUR"),
                    "customer": body["customer"],
                    "idempotency_key": key,
                }
                self.charges.append(charge)
                reply = (200, {"id": charge["id"], "status": "succeeded"})
            self._by_key[key] = reply
            return reply

    def _find(self, key: str) -> tuple[int, Any]:
        if not key:
            return 400, {"error": "idempotency_key is required"}
        with self._lock:
            for charge in self.charges:
                if charge["idempotency_key"] == key:
                    return 200, {**charge, "status": "succeeded"}
        return 404, {"error": "no charge with this idempotency key"}

"""The fast tier's fakes at the edges: HTTP peers answered in-process, never our own code.

Our HTTP clients (the CRM's, the payment gateway's) call through `common.http.session_for`,
a `requests.Session` per base URL. `HTTPFake` is a requests transport adapter mounted on that
session for the peer's base URL: the request is built, sent and its response parsed by
requests exactly as in production, but answered by a Python function instead of a socket.

`FakeGateway` and `FakeCRM` are such peers with the behaviour the tasks rely on
(idempotency keys, declines, outages), like the loopback sandboxes of the platform tier.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    query: dict[str, list[str]]


Answer = tuple[int, Any]  # (HTTP status, JSON body)


class HTTPFake(BaseAdapter):
    """A requests adapter answering every request with `handle(call) -> (status, json)`."""

    def __init__(self, handle: Callable[[Call], Answer]) -> None:
        super().__init__()
        self.handle = handle
        self.calls: list[Call] = []
        self.down = 0  # the next `down` requests fail as an unreachable peer would
        self._lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        body = request.body
        if isinstance(body, bytes):
            body = body.decode()
        call = Call(
            method=request.method or "GET",
            path=parts.path,
            headers=dict(request.headers),
            json=json.loads(body) if body else None,
            query=parse_qs(parts.query),
        )
        with self._lock:
            self.calls.append(call)
            if self.down > 0:
                self.down -= 1
                raise requests.ConnectionError(f"fake peer down: {call.method} {call.path}", request=request)
            status, answer = self.handle(call)
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(answer).encode() if answer is not None else b""
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        response.url = request.url or ""
        response.request = request
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


def mount(base_url: str, fake: HTTPFake) -> Callable[[], None]:
    """Answer `base_url`'s requests with `fake` (on the process's pooled session); undo function."""
    from common.http import session_for

    base = base_url.rstrip("/")
    session = session_for(base)
    previous = dict(session.adapters)
    session.mount(base, fake)

    def unmount() -> None:
        session.adapters.clear()
        session.adapters.update(previous)

    return unmount


class FakeGateway:
    """The payment gateway (Stripe-like): one charge per idempotency key.

    `POST /v1/charges` charges, or answers the key's first charge again; a key reused with
    another amount, currency or customer is refused (HTTP 400 `idempotency_error`). A customer
    in `declining` is declined (402). `fail_next(n)` answers n requests with 503; `down = n`
    makes n requests fail to connect. `GET /v1/charges?idempotency_key=` finds a charge.
    """

    def __init__(self) -> None:
        self.charges: dict[str, dict[str, Any]] = {}  # by idempotency key
        self.declining: set[str] = {"cus_declined"}
        self._errors = 0
        self.http = HTTPFake(self._handle)

    @property
    def calls(self) -> list[Call]:
        return self.http.calls

    def charge_calls(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path == "/v1/charges"]

    def fail_next(self, n: int = 1) -> None:
        self._errors = n

    @property
    def down(self) -> int:
        return self.http.down

    @down.setter
    def down(self, n: int) -> None:
        self.http.down = n

    def _handle(self, call: Call) -> Answer:
        if self._errors > 0:
            self._errors -= 1
            return 503, {"error": "unavailable"}
        if call.path != "/v1/charges":
            return 404, {"error": "not found"}
        if call.method == "GET":
            key = (call.query.get("idempotency_key") or [""])[0]
            return (200, self.charges[key]) if key in self.charges else (404, {"error": "no such charge"})
        key = call.headers.get("Idempotency-Key", "")
        asked = {
            "amount": str(Decimal(call.json["amount"])),
            "currency": call.json["currency"].lower(),
            "customer": call.json["customer"],
        }
        if key in self.charges:
            first = self.charges[key]
            if {k: first[k] for k in asked} != asked:
                return 400, {"type": "idempotency_error", "error": "key used with other parameters"}
            return 200, first
        if asked["customer"] in self.declining:
            return 402, {"error": "card_declined"}
        charge = {"id": f"ch_{len(self.charges) + 1}", **asked}
        self.charges[key] = charge
        return 200, charge


class FakeCRM:
    """The external CRM: `POST /api/doctors` upserts by reference and answers the CRM's id.

    `fail_next(n, status=503)` answers n requests with that status; `down = n` makes n
    requests fail to connect.
    """

    def __init__(self) -> None:
        self.doctors: dict[str, dict[str, Any]] = {}  # by our reference (the doctor's id)
        self._errors: list[int] = []
        self.http = HTTPFake(self._handle)

    @property
    def calls(self) -> list[Call]:
        return self.http.calls

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        self._errors = [status] * n

    @property
    def down(self) -> int:
        return self.http.down

    @down.setter
    def down(self, n: int) -> None:
        self.http.down = n

    def _handle(self, call: Call) -> Answer:
        if self._errors:
            return self._errors.pop(0), {"error": "failing on purpose"}
        if call.method != "POST" or call.path != "/api/doctors":
            return 404, {"error": "not found"}
        ref = str(call.json["reference"])
        record = self.doctors.setdefault(ref, {"id": f"crm-{ref}"})
        record.update(name=call.json["name"], email=call.json["email"])
        return 200, {"id": record["id"]}

"""CRM sandbox: upserts doctors by reference and answers with a stable CRM id."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from devtools.sandboxes.http import JSONServer


class CRMSandbox(JSONServer):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.doctors: dict[str, dict[str, Any]] = {}
        # References answered 503 on every request: doctors whose sync fails for good.
        self.refused: set[str] = set()
        self._ids = itertools.count(1000)
        self._lock = threading.Lock()
        super().__init__(self._handle, host, port)

    def _handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/health":
            return 200, {"status": "ok"}
        if method == "POST" and path == "/api/doctors":
            if not isinstance(body, dict) or not body.get("reference") or not body.get("email"):
                return 422, {"error": "reference and email are required"}
            if str(body["reference"]) in self.refused:
                return 503, {"error": "refused for this reference"}
            with self._lock:
                record = self.doctors.get(body["reference"])
                if record is None:
                    record = {"id": f"crm-{next(self._ids)}", "writes": 0}
                    self.doctors[body["reference"]] = record
                record.update(name=body.get("name", ""), email=body["email"])
                record["writes"] += 1
            return 201, {"id": record["id"]}
        return 404, {"error": f"no route {method} {path}"}

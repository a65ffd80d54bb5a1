"""A JSON HTTP server on loopback, in a background thread, with fault injection."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

Handler = Callable[[str, str, dict[str, str], Any], tuple[int, Any]]


class Faults:
    """What the next requests should suffer: `fail` N with HTTP 503, `hang` N for `delay` s."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fail = 0
        self.status = 503
        self.hang = 0
        self.delay = 0.0

    def take(self) -> tuple[int | None, float]:
        with self.lock:
            if self.hang > 0:
                self.hang -= 1
                return None, self.delay
            if self.fail > 0:
                self.fail -= 1
                return self.status, 0.0
            return None, 0.0


class JSONServer:
    def __init__(self, handle: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.faults = Faults()
        self.requests: list[dict[str, Any]] = []
        self.latency = 0.0
        outer = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body waits for the
            # client's delayed ACK and every call took 40 ms more than `latency` said.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self._reply(400, {"error": "malformed JSON"})
                    return
                status, delay = outer.faults.take()
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "at": time.monotonic(),  # fault tests measure redelivery delays from it
                    }
                )
                if delay or outer.latency:
                    time.sleep(delay or outer.latency)
                if status is not None:
                    self._reply(status, {"error": "injected failure"})
                    return
                code, payload = handle(self.command, self.path, dict(self.headers), body)
                self._reply(code, payload)

            def _reply(self, code: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left; that is the point of `hang`

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.httpd = ThreadingHTTPServer((host, port), RequestHandler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = cast("tuple[str, int]", self.httpd.server_address[:2])  # AF_INET
        return f"http://{host}:{port}"

    def start(self) -> JSONServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> JSONServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

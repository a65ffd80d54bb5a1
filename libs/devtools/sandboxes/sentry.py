"""Sentry ingest sandbox: receives envelopes at a DSN on loopback and keeps their events."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast


def parse_envelope(raw: bytes) -> list[tuple[dict[str, Any], Any]]:
    """(item header, payload) pairs of a Sentry envelope (header line, then header/payload lines)."""
    lines = raw.split(b"\n")
    items = []
    i = 1  # line 0 is the envelope header
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        header = json.loads(lines[i])
        if "length" in header:  # length-prefixed payload may contain newlines
            start = sum(len(line) + 1 for line in lines[: i + 1])
            payload_bytes = raw[start : start + header["length"]]
            i = raw[: start + header["length"]].count(b"\n") + 1
        else:
            payload_bytes = lines[i + 1] if i + 1 < len(lines) else b""
            i += 2
        try:
            payload: Any = json.loads(payload_bytes)
        except ValueError:
            payload = payload_bytes
        items.append((header, payload))
    return items


class SentrySink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.envelopes: list[list[tuple[dict[str, Any], Any]]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli  # type: ignore[import-not-found]

                    body = brotli.decompress(body)
                sink.envelopes.append(parse_envelope(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        host, port = cast("tuple[str, int]", self.httpd.server_address[:2])  # AF_INET
        return f"http://publickey@{host}:{port}/1"

    @property
    def events(self) -> list[dict[str, Any]]:
        return [payload for env in self.envelopes for header, payload in env if header.get("type") == "event"]

    def start(self) -> SentrySink:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> SentrySink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""SMTP sink: a real SMTP server (aiosmtpd) on loopback that keeps what it receives."""

from __future__ import annotations

import threading
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from devtools.ports import free_port


class _Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.original_content or envelope.content)
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()
        return "250 Message accepted for delivery"


class SMTPSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.collector = _Collector()
        self.host = host
        self.port = port or free_port(host)
        self.controller = Controller(self.collector, hostname=host, port=self.port)

    @property
    def messages(self) -> list[Message]:
        return list(self.collector.messages)

    def wait_for(self, count: int, timeout: float = 30) -> list[Message]:
        with self.collector.cond:
            self.collector.cond.wait_for(lambda: len(self.collector.messages) >= count, timeout)
            return list(self.collector.messages)

    def start(self) -> SMTPSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SMTPSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

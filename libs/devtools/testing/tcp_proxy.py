"""A TCP proxy for the fault suite that can turn the connections through it half-open.

`freeze()` stops forwarding bytes in both directions on every connection, without closing
either socket (what a NAT or a load balancer that dropped its state, or a partition, does to
a long-lived connection): the peers see no FIN, no RST, just silence. Connections accepted
while frozen are black-holed too. `thaw()` lets new connections through again, while the
connections that were frozen stay dead for good (their state is gone, as after a NAT reset),
or, with `thaw(resume=True)`, start forwarding again (a partition that healed).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType


class _Link:
    """One client connection and its upstream twin, pumped by one thread."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None, frozen: bool) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = frozen
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class TcpProxy:
    """Listens on 127.0.0.1:<free port> and forwards each connection to `target`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._frozen = False
        self._stopped = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True)

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    # --- control -------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def freeze(self) -> int:
        """Stop forwarding on every connection (open and future) without closing any; how many
        open connections were frozen."""
        with self._lock:
            self._frozen = True
            live = [link for link in self._links if not link.closed]
            for link in live:
                link.frozen = True
        return len(live)

    def thaw(self, resume: bool = False) -> None:
        """Forward new connections again; the frozen ones stay dead unless `resume`."""
        with self._lock:
            self._frozen = False
            if resume:
                for link in self._links:
                    link.frozen = False

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if not link.closed)

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # --- the pumps -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                frozen = self._frozen
            upstream = None
            if not frozen:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            link = _Link(client, upstream, frozen)
            with self._lock:
                self._links.append(link)
                self.accepted += 1
            threading.Thread(target=self._pump, args=(link,), name="tcp-proxy-pump", daemon=True).start()

    def _pump(self, link: _Link) -> None:
        """Forward both ways until either side closes; while frozen, read nothing and send
        nothing (the bytes wait in the kernel's buffers, and then the sender's)."""
        while not self._stopped.is_set() and not link.closed:
            if link.frozen or link.upstream is None:
                self._stopped.wait(0.1)
                continue
            try:
                readable, _, _ = select.select([link.client, link.upstream], [], [], 0.1)
            except (OSError, ValueError):
                break
            if link.frozen:
                continue  # frozen while waiting: what is readable stays unread
            try:
                for sock in readable:
                    data = sock.recv(65536)
                    other = link.upstream if sock is link.client else link.client
                    if not data:
                        raise ConnectionError("closed")
                    other.sendall(data)
            except OSError:
                break
        if not self._stopped.is_set():
            link.close()

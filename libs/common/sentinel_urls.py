"""Reading a `sentinel://` Redis URL: the sentinels, the database and the data nodes' credentials.

Below the settings (which refuse a URL that cannot be read) and the transport (which connects
through it, `common.transport.sentinel`); it imports nothing of ours. The URL's form:

    REDIS_URL=sentinel://:DATA_PASSWORD@s1:26379;sentinel://s2:26379;sentinel://s3:26379/0

Not supported (refused with a clear error): TLS options (`ssl_*`) on a sentinel URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

SCHEME = "sentinel"
DEFAULT_PORT = 26379


class SentinelURLError(ValueError):
    """A `sentinel://` URL that cannot be read; the message never shows a password."""


@dataclass(frozen=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def kombu_url(self) -> str:
        """The URL kombu and Celery read: every sentinel with the credentials and the database.

        kombu takes the credentials and the virtual host from the first URL, Celery's backend
        the database from the first; both list the sentinels from all of them.
        """
        auth = ""
        if self.password is not None or self.username is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return ";".join(f"{SCHEME}://{auth}{_netloc(h, p)}/{self.db}" for h, p in self.sentinels)


def is_sentinel_url(url: str | None) -> bool:
    return bool(url) and url.strip().lower().startswith(f"{SCHEME}://")  # type: ignore[union-attr]


def parse_sentinel_url(url: str) -> SentinelURL:
    """The sentinels, database and data-node credentials of a `sentinel://h1:p1;sentinel://h2:p2/0`."""
    sentinels: list[tuple[str, int]] = []
    dbs: set[int] = set()
    credentials: set[tuple[str | None, str | None]] = set()
    for number, chunk in enumerate(url.strip().split(";"), 1):
        chunk = chunk.strip()
        if not chunk:
            continue
        scheme, sep, rest = chunk.partition("://")
        if not sep or scheme.lower() != SCHEME:
            raise SentinelURLError(
                f"part {number} of the sentinel URL is not sentinel://HOST:PORT: every sentinel is "
                "written sentinel://HOST:PORT, separated by ';'"
            )
        # The credentials run to the last `@` (a password may hold `/`, `?`, `#` unencoded).
        userinfo, at, after = rest.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            credentials.add((unquote(user) or None, unquote(password) if colon else None))
        parts = urlsplit(f"{SCHEME}://{after}")
        if parts.query or parts.fragment:
            if "ssl_" in parts.query:
                raise SentinelURLError("TLS options (ssl_*) are not supported on a sentinel:// URL")
            raise SentinelURLError(f"part {number} of the sentinel URL has a query or fragment; none is read")
        try:
            host, port = parts.hostname, parts.port or DEFAULT_PORT
        except ValueError:
            raise SentinelURLError(f"part {number} of the sentinel URL has an invalid port") from None
        if not host:
            raise SentinelURLError(f"part {number} of the sentinel URL names no host")
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise SentinelURLError(f"the database in part {number} of the sentinel URL is not a number")
            dbs.add(int(path))
        sentinels.append((host, port))
    if not sentinels:
        raise SentinelURLError("the sentinel URL names no sentinel")
    if len(dbs) > 1:
        raise SentinelURLError("the sentinel URL names different databases; give the database once")
    if len(credentials) > 1:
        raise SentinelURLError("the sentinel URL gives different credentials; give them once")
    login, secret = next(iter(credentials), (None, None))
    return SentinelURL(tuple(sentinels), next(iter(dbs), 0), login, secret)


def sentinel_kwargs(password: str | None, timeout: float | None) -> dict[str, Any]:
    """How to talk to the sentinels themselves: bounded, with their own password."""
    kwargs: dict[str, Any] = {}
    if timeout is not None:
        kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    if password:
        kwargs["password"] = password
    return kwargs


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

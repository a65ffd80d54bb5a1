"""Hide credentials in URLs before they are shown to a person.

Not `urllib.parse.urlsplit`: it ends the authority at the first `/`, `?` or `#`, so a
password typed with one of those unencoded (`redis://:p#ss@host`) would be cut in two and
its tail shown as the path or fragment. Here the credentials run to the *last* `@` of the
URL: a password is always hidden whole (an `@` later in the URL, which no broker or
database URL has, costs at most some over-redaction, never a leak), and the host is kept
as written, IPv6 brackets included.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)


def split_credentials(url: str) -> tuple[str, str | None, str]:
    """`url` as (`scheme://`, userinfo or None, the rest: host, port, path, query as written).

    No scheme (not a URL with an authority): `("", None, url)`.
    """
    match = _SCHEME.match(url)
    if match is None:
        return "", None, url
    prefix, rest = match.groups()
    userinfo, at, after = rest.rpartition("@")
    if not at:
        return prefix, None, rest
    return prefix, userinfo, after


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`; the user name, host, port and path kept."""
    prefix, userinfo, rest = split_credentials(url)
    if userinfo is None:
        return url
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return url  # a user name alone (redis://user@host): nothing secret to hide
    return f"{prefix}{user}:***@{rest}"

"""redact_url hides a password whole, whatever it contains, and keeps the host as written."""

from __future__ import annotations

import pytest

from common.masking import redact_url, split_credentials


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://jobs:pw@redis.internal:6379/0", "redis://jobs:***@redis.internal:6379/0"),
        # urlsplit would end the authority at these and show the password's tail as path/query/fragment.
        ("redis://:pa#ss@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("redis://:pa@ss@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("redis://:pa/ss@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("redis://:pa?ss@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        ("redis://jobs:a#b/c?d@e:f@redis.internal:6379/0", "redis://jobs:***@redis.internal:6379/0"),
        # IPv6 hosts keep their brackets (urlsplit's hostname drops them).
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        (
            "rediss://:p#w@[2001:db8::7]:6380/0?ssl_ca_certs=/etc/ca.pem",
            "rediss://:***@[2001:db8::7]:6380/0?ssl_ca_certs=/etc/ca.pem",
        ),
        (
            "postgres://jobs:pw@db.internal:5432/jobs?sslmode=require",
            "postgres://jobs:***@db.internal:5432/jobs?sslmode=require",
        ),
        ("unix://:pw@/run/redis/redis.sock?db=0", "unix://:***@/run/redis/redis.sock?db=0"),
        ("redis://:@localhost:6379/0", "redis://:***@localhost:6379/0"),
    ],
)
def test_the_password_is_hidden_whole(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "redis://[::1]:6379/0", "redis://jobs@localhost:6379/0", "not a url", ""],
)
def test_a_url_without_a_password_is_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_split_credentials_keeps_the_rest_as_written() -> None:
    assert split_credentials("rediss://u:p#w@[::1]:6380/0") == ("rediss://", "u:p#w", "[::1]:6380/0")
    assert split_credentials("redis://h:6379") == ("redis://", None, "h:6379")

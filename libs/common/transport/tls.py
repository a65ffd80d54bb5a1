"""TLS to Redis, one way for every client: the broker, the result backend, the locks.

A `rediss://` URL carries its TLS settings in its query, as redis-py reads them
(`rediss://:pw@redis:6380/0?ssl_ca_certs=/etc/jobs/redis-ca.pem&ssl_certfile=...&ssl_keyfile=...`),
and the certificate is always verified: kombu alone would connect with CERT_NONE (its
default for a bare `rediss://`), and Celery's result backend refuses a `rediss://` URL
without `ssl_cert_reqs`. Here the URL is read once, the `ssl_*` options are taken out of
it and handed to each client explicitly, with `ssl_cert_reqs` CERT_REQUIRED and the
hostname checked. `ssl_cert_reqs=none` or `optional` is refused (`RedisTLSError`): give
the CA instead (`ssl_ca_certs`), so nobody between a worker and Redis can read or forge
tasks. A plain `redis://` or `unix://` URL is left as it is.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from common.sentinel_urls import is_sentinel_url
from common.transport.sentinel import master_client

# The TLS options a `rediss://` URL may carry; each is passed on to every client.
PATH_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")
TLS_OPTIONS = (*PATH_OPTIONS, "ssl_cert_reqs", "ssl_check_hostname")
_REQUIRED = ("required", "cert_required")


class RedisTLSError(ValueError):
    """A `rediss://` URL asks for TLS without verification, or for an unknown TLS option."""


def split_tls(url: str) -> tuple[str, dict[str, Any] | None]:
    """(`url` without its `ssl_*` query options, the TLS options) - (url, None) if not rediss://.

    The options always verify: `ssl_cert_reqs` is CERT_REQUIRED and `ssl_check_hostname`
    True; the password in the URL is never part of an error message.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tls_keys = [key for key, _ in query if key.startswith("ssl_")]
    if parts.scheme != "rediss":
        if tls_keys:
            raise RedisTLSError(
                f"{', '.join(tls_keys)} in a {parts.scheme}:// Redis URL: TLS options need a rediss:// URL"
            )
        return url, None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    rest = []
    for key, value in query:
        if not key.startswith("ssl_"):
            rest.append((key, value))
        elif key == "ssl_cert_reqs":
            if value.strip().lower() not in _REQUIRED:
                raise RedisTLSError(
                    f"ssl_cert_reqs={value} in the rediss:// Redis URL: the Redis certificate is always "
                    "verified. Give the CA that signed it instead (ssl_ca_certs=/path/to/ca.pem)."
                )
        elif key == "ssl_check_hostname":
            if value.strip().lower() in ("false", "0", "no", "off"):
                raise RedisTLSError(
                    "ssl_check_hostname=false in the rediss:// Redis URL: the certificate must name the "
                    "host in the URL (put the name or IP address in its subjectAltName)."
                )
        elif key in PATH_OPTIONS:
            options[key] = value
        else:
            raise RedisTLSError(f"{key} in the rediss:// Redis URL: supported are {', '.join(TLS_OPTIONS)}")
    clean = urlunsplit(parts._replace(query=urlencode(rest)))
    return clean, options


def redis_client_kwargs(url: str) -> tuple[str, dict[str, Any]]:
    """(url, kwargs) for `redis.Redis.from_url(url, **kwargs)`: the same TLS as the broker's."""
    clean, options = split_tls(url)
    return clean, dict(options or {})


def redis_from_url(url: str, **kwargs: Any) -> Any:
    """A `redis.Redis` for `url` with the platform's TLS (certificate verified) where it is rediss://.

    A `sentinel://` URL gives a client on the current primary that follows a failover
    (`common.transport.sentinel`; REDIS_SENTINEL_MASTER names the primary).
    """
    import redis

    if is_sentinel_url(url):
        return master_client(url, **kwargs)
    clean, options = redis_client_kwargs(url)
    return redis.Redis.from_url(clean, **options, **kwargs)

"""Redis Sentinel: one `sentinel://` URL, read once, for the broker, the results and every client.

REDIS_URL names the sentinels, kombu's way, each separated by `;`; the database and the data
nodes' password may be written on any of them (once is enough):

    REDIS_URL=sentinel://:DATA_PASSWORD@s1:26379;sentinel://s2:26379;sentinel://s3:26379/0
    REDIS_SENTINEL_MASTER=mymaster            # the name the sentinels monitor (required)
    REDIS_SENTINEL_PASSWORD=...               # the sentinels' own `requirepass`, if any

The password in the URL is the primary's and replicas' (`requirepass`/`masterauth`), as in
kombu and Celery; the sentinels' own password is a separate setting. Every client asks the
sentinels for the current primary whenever it (re)connects, and a connection that finds the
old primary demoted to a replica (READONLY) is dropped and re-resolved (redis-py's
`SentinelManagedConnection`), so a failover is followed by the broker, the result backend,
the in-flight owner's heartbeats and acks, the locks, the beat leader lock and the stores.

Not supported (refused with a clear error): TLS options (`ssl_*`) on a sentinel URL. Reading the
URL lives below the settings, in `common.sentinel_urls`; connecting through it lives here.
"""

from __future__ import annotations

from typing import Any

from common.sentinel_urls import SentinelURLError, parse_sentinel_url, sentinel_kwargs
from common.settings import get_settings


def master_client(
    url: str,
    *,
    master: str | None = None,
    sentinel_password: str | None = None,
    **kwargs: Any,
) -> Any:
    """A `redis.Redis` on the current primary of `master`, following failovers.

    `master` and `sentinel_password` default to REDIS_SENTINEL_MASTER and
    REDIS_SENTINEL_PASSWORD; `kwargs` are `redis.Redis` connection options.
    """
    from redis.sentinel import Sentinel

    target = parse_sentinel_url(url)
    if master is None:
        s = get_settings()
        master = s.redis_sentinel_master
        if sentinel_password is None and s.redis_sentinel_password is not None:
            sentinel_password = s.redis_sentinel_password.get_secret_value()
    if not master:
        raise SentinelURLError(
            "a sentinel:// Redis URL needs the name of the monitored primary: set REDIS_SENTINEL_MASTER"
        )
    timeout = kwargs.get("socket_connect_timeout", kwargs.get("socket_timeout"))
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs(sentinel_password, timeout))
    credentials = {"username": target.username, "password": target.password}
    return manager.master_for(
        master, db=target.db, **{k: v for k, v in credentials.items() if v is not None}, **kwargs
    )

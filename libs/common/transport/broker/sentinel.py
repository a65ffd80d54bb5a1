"""The reliable transport (`transport.Channel`) on Redis Sentinel: `sentinel://` broker URLs.

kombu's `SentinelChannel` contributes how clients are made: its connection pool asks the
sentinels for the current primary at every (re)connect, and drops a connection that finds
its node demoted (READONLY). Everything else is ours (`transport.Channel`: atomic fetch,
owned in-flight messages, delayed set, dead letters). The in-flight owner - its heartbeats,
acks and requeues - gets a pool whose connections resolve the primary the same way, so
after a failover it heartbeats, acknowledges and recovers on the promoted replica.

Transport options (common.celery_config): `master_name` (REDIS_SENTINEL_MASTER) and
`sentinel_kwargs` (the sentinels' own password, timeouts).
"""

from __future__ import annotations

import os
from typing import Any

from kombu.transport import redis as kombu_redis

from common.transport.broker import ownership
from common.transport.broker.transport import Channel, Transport


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    from_transport_options = Channel.from_transport_options + (
        "master_name",
        "min_other_sentinels",
        "sentinel_kwargs",
        "sentinel_fanout_compat",
    )

    @property
    def owner(self) -> ownership.Owner:
        owner = self._owner
        if owner is None or owner.pid != os.getpid():
            owner = self._owner = ownership.owner_for(
                self._owner_pool_params(),
                dead_after=float(self.heartbeat_timeout),
                tick=float(self.heartbeat_interval),
            )
        return owner

    def _owner_pool_params(self) -> dict[str, Any]:
        """Parameters for `redis.ConnectionPool(**params)` whose connections follow the primary.

        The channel's pool is a `SentinelConnectionPool`: its connection kwargs carry the proxy
        that asks the sentinels where the primary is, so a plain pool of the same connection
        class, given those kwargs, resolves the primary at each connect too.
        """
        pool = self.pool
        return {**pool.connection_kwargs, "connection_class": pool.connection_class}


class SentinelTransport(Transport):
    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port

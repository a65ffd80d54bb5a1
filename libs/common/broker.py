"""The Redis broker transport: kombu's, minus a client object built for every command.

kombu's Redis channel makes a new `redis.Redis` for each publish, ack and restore
(`Channel.conn_or_acquire`). Since redis-py 5, `Redis.__init__` fills a case-insensitive
table of ~200 response callbacks, so that construction was the single biggest cost in the
benchmark's profile: a fifth to a third of a worker's and a producer's CPU (redis-py
issue #3624). A `Redis` client is thread-safe and holds no connection of its own (it
borrows one from the pool per command), so one per channel serves every caller.

Selected by `broker_transport` in `common.celery_config`; the URL stays `redis://`.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        # kombu replaces its pool after a fork or a lost connection: follow it.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client(asynchronous=False)
        return client

    def close(self) -> None:
        self._sync_client = None
        super().close()


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"

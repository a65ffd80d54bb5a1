"""The broker transport: one Redis client per channel, following kombu's pool."""

from __future__ import annotations

from celery import Celery

from common.broker import Channel
from common.celery_app import current_app
from common.celery_config import celery_config
from common.settings import Settings


def test_one_client_serves_every_command_and_follows_a_new_pool(redis_url: str) -> None:
    with current_app().connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel), "broker_transport must select common.broker"
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        channel._put("test-broker", {"body": "one"})
        # After a fork or a lost connection kombu drops its pool; the client must follow.
        channel._disconnect_pools()
        with channel.conn_or_acquire() as client:
            assert client is not first and client.connection_pool is channel.pool
        channel._put("test-broker", {"body": "two"})
        assert channel._size("test-broker") == 2
        channel._purge("test-broker")


def test_a_tls_broker_url_keeps_tls() -> None:
    """An explicit transport overrides the URL scheme; rediss:// must not lose its TLS."""
    app = Celery("tls-check")
    app.conf.update(celery_config(Settings(redis_url="rediss://cache.example:6380/0")))
    conn = app.connection_for_write()  # built, not connected
    assert conn.ssl, "rediss:// broker URL would connect without TLS"
    assert conn.transport_cls == "rediss"

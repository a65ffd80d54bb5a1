"""The Redis broker: kombu's transport made reliable (see `transport`), bound by URL alias."""

from common.transport.broker.transport import Channel, Transport, install

__all__ = ["Channel", "Transport", "install"]

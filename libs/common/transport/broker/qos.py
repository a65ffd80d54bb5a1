"""Acknowledgement for the reliable transport: acks and rejects settle the owner's in-flight
record in Redis; nothing relies on a message's age."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, cast

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from common.transport.broker import ownership

logger = logging.getLogger("common.transport.broker.transport")


class QoS(kombu_redis.QoS):
    """Acks and rejects settle the owner's in-flight record; nothing relies on message age."""

    _delivered: OrderedDict[str, Any]  # virtual.QoS sets it in __init__

    def _owner_holding(self, tag: str) -> ownership.Owner | None:
        # The owner on this channel's Redis (one per server).
        owner: ownership.Owner = cast(Any, self.channel).owner
        return owner if tag in owner.held else None

    def append(self, message: Any, delivery_tag: str) -> None:
        virtual.QoS.append(self, message, delivery_tag)  # FETCH already recorded it in Redis

    def ack(self, delivery_tag: str) -> None:
        owner = self._owner_holding(delivery_tag)
        if owner is not None:
            owner.ack(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        owner = self._owner_holding(delivery_tag)
        if owner is not None:
            if requeue:
                # Counted in Redis by the same step (scripts.REQUEUE): the next delivery is
                # marked redelivered, and one past TASK_MAX_REQUEUES is dead-lettered instead.
                returns = owner.returns(delivery_tag) + 1
                owner.requeue([delivery_tag])
                limit = int(cast(Any, self.channel).max_requeues)
                logger.warning(
                    "Requeued message %s at its task's request (%d of at most %d requeues%s)",
                    delivery_tag,
                    returns,
                    limit,
                    "; it is dead-lettered when next taken" if returns > limit else "",
                )
            else:
                owner.ack(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        # A closing channel (a lost connection, a consumer restart) keeps its messages: the
        # tasks may still be running, and they stay owned by this live process. What is
        # left at a clean exit goes back in `Owner.release`; after a crash, on heartbeat
        # expiry.
        self._delivered.clear()

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        pass  # recovery is by heartbeat (ownership), never by message age

"""What waits in Redis, per queue, read in one round trip: for metrics and the operations page.

Both read the same numbers through `read_broker`, so a dashboard and the admin never
disagree on what "depth" or "age" means:
- length: messages waiting, every priority list of the queue;
- oldest_age: seconds since the oldest waiting message was published (the broker stamps
  `published_at` on each message it puts: common.transport.broker); None when the queue is
  empty or its oldest message came from a producer that does not stamp (stock kombu);
- consumers: worker processes that consume the queue and still heartbeat
  (common.transport.broker.ownership publishes what each consumes);
- dead_letters: dead letters kept for the queue (common.deadletters);
- paused: the queue's pause (common.transport.broker.pause), None while it runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.settings import get_settings
from common.transport.broker import scripts
from common.transport.broker.pause import PAUSED, Pause, paused_from
from common.transport.dead_letter_store import QUEUE_PREFIX

PRIORITY_SEP = "\x06\x16"  # kombu: priority 0 is the queue's own list, 1..9 `<queue>\x06\x16<n>`
PRIORITIES = range(10)  # common.celery_config sets the steps 0..9


@dataclass(frozen=True)
class QueueSnapshot:
    queue: str
    length: int
    oldest_age: float | None
    consumers: int
    dead_letters: int
    paused: Pause | None = None

    def paused_seconds(self, now: float) -> float:
        """How long the queue has been paused at `now` (0 while it runs)."""
        return self.paused.seconds(now) if self.paused is not None else 0.0


@dataclass(frozen=True)
class BrokerSnapshot:
    queues: list[QueueSnapshot]
    delayed: int  # countdown/eta messages not yet due, all queues
    now: float = 0.0  # Redis's clock when read


def queue_keys(queue: str) -> list[str]:
    """The Redis lists holding `queue`'s waiting messages, one per priority."""
    return [f"{queue}{PRIORITY_SEP}{p}" if p else queue for p in PRIORITIES]


def read_broker(client: Any, queues: Sequence[str], *, dead_after: float | None = None) -> BrokerSnapshot:
    """Read every figure of `queues` in one pipelined round trip; Redis errors propagate.

    `dead_after`: seconds without a heartbeat after which a consumer no longer counts
    (default: BROKER_HEARTBEAT_TIMEOUT). Without it, a queue whose every worker was killed
    would show its dead consumers until some live worker swept them.
    """
    if dead_after is None:
        dead_after = get_settings().broker_heartbeat_timeout
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
            pipe.lindex(key, -1)  # kombu pushes on the left and we take from the right
        pipe.zcard(QUEUE_PREFIX + queue)
    pipe.zcard(scripts.DELAYED)
    pipe.hgetall(scripts.CONSUMERS)
    pipe.zrange(scripts.OWNERS, 0, -1, withscores=True)
    pipe.hgetall(PAUSED)
    # A PAUSED of the wrong type (written by hand) pauses nothing (scripts.FETCH): read as none.
    *replies, paused_reply = pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    paused = paused_from({} if isinstance(paused_reply, Exception) else paused_reply)

    seconds, micros = replies[0]
    now = int(seconds) + int(micros) / 1e6  # Redis's clock: the heartbeats are in it too
    owners, consumed, delayed = replies[-1], replies[-2], replies[-3]
    live = {_text(o) for o, beat in owners if beat >= (now - dead_after) * 1000}
    consumers: dict[str, int] = {}
    for owner, listed in consumed.items():
        if _text(owner) in live:
            for queue in _text(listed).split(","):
                consumers[queue] = consumers.get(queue, 0) + 1

    snapshots = []
    per_queue = 2 * len(PRIORITIES) + 1
    for i, queue in enumerate(queues):
        chunk = replies[1 + i * per_queue : 1 + (i + 1) * per_queue]
        lengths, tails, dead = chunk[0:-1:2], chunk[1:-1:2], chunk[-1]
        published = [t for t in (_published_at(raw) for raw in tails if raw is not None) if t is not None]
        snapshots.append(
            QueueSnapshot(
                queue=queue,
                length=sum(int(n) for n in lengths),
                oldest_age=max(0.0, now - min(published)) if published else None,
                consumers=consumers.get(queue, 0),
                dead_letters=int(dead),
                paused=paused.get(queue),
            )
        )
    return BrokerSnapshot(queues=snapshots, delayed=int(delayed), now=now)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _published_at(raw: bytes | str) -> float | None:
    try:
        stamp = json.loads(raw)["properties"]["published_at"]
    except (ValueError, KeyError, TypeError):
        return None
    return float(stamp) if isinstance(stamp, int | float) else None

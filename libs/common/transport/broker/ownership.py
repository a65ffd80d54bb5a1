"""Who holds which message: one owner per consuming process, kept alive by heartbeats.

A message a worker has taken stays in Redis, in its owner's in-flight hash, until the task
is acknowledged. The owner's heartbeat thread refreshes its lease every `tick` seconds, so a
task that runs for hours on a live worker is never handed to anyone else, whatever its age.
When a process dies (SIGKILL, OOM, a lost host) its heartbeats stop, and the next tick of any
live owner puts its messages back on their queues: recovery is bounded by the heartbeat
timeout, not by a visibility timeout that must exceed the longest task.

The same tick moves delayed messages (countdown, ETA, retry backoff) that are due onto their
queues, so nothing waits unacknowledged in a worker's memory.

The lease is also refreshed by a helper process (`heartbeat`), which a task holding the GIL
cannot starve: a process stuck in one long C call is alive, and keeps its messages.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from common.transport.broker import heartbeat, scripts

logger = logging.getLogger(__name__)

SEP = "\x06\x16"  # kombu's separator between a queue's name and its priority


class Owner:
    """This process's identity as a holder of in-flight messages."""

    def __init__(self, pool_params: dict[str, Any], *, dead_after: float, tick: float) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pid = os.getpid()
        self.inflight_key = scripts.INFLIGHT_PREFIX + self.id
        self.dead_after_ms = int(dead_after * 1000)
        self.tick_interval = tick
        self.client = redis.Redis(connection_pool=redis.ConnectionPool(**pool_params))
        self._tick = self.client.register_script(scripts.TICK_SCRIPT)
        self._requeue = self.client.register_script(scripts.REQUEUE)
        self._requeue_unknown = self.client.register_script(scripts.REQUEUE_UNKNOWN)
        # Tags this process has been handed and not settled -> the task id each carries
        # (None until the message is decoded); at most a prefetch's worth.
        self.held: dict[str, str | None] = {}
        self._pending_acks: set[str] = set()  # acks that failed while Redis was away
        # A fetch failed on a connection error: Redis may hold a message this process never
        # received. Set here, on the process, because the consumer reconnects on a new channel.
        self.lost_fetch = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.recovered = 0
        self.promoted = 0
        self.queues: set[str] = set()  # what this process consumes, published on each tick
        self.last_tick: float | None = None  # time.time() of the last heartbeat Redis took
        self.tick()  # hold a lease before the first fetch, so nothing is ever unowned
        # The lease's refresher that the GIL cannot starve (`heartbeat`); the thread's tick
        # refreshes it too, and is all there is when the helper cannot run.
        self._pool_params = pool_params
        self._helper: heartbeat.Helper | None = None
        self._helper_lock = threading.Lock()
        self._start_helper()
        self._thread = threading.Thread(target=self._run, name="jobs-owner-heartbeat", daemon=True)
        self._thread.start()

    # --- the heartbeat thread ------------------------------------------------------------
    def tick(self) -> None:
        recovered, promoted = self._tick(
            keys=[scripts.OWNERS, scripts.DELAYED, scripts.TICK, scripts.CONSUMERS],
            args=[
                self.id, self.dead_after_ms, scripts.INFLIGHT_PREFIX, SEP, scripts.BELL_PREFIX, 500,
                ",".join(sorted(self.queues)),
            ],
        )  # fmt: skip
        self.last_tick = time.time()
        if recovered:
            self.recovered += recovered
            logger.warning(
                "Requeued %d message(s) held by worker processes that stopped heartbeating", recovered
            )
        self.promoted += promoted
        if self._pending_acks:
            self._flush_acks()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.tick_interval):
                try:
                    self.tick()
                except redis.RedisError as exc:
                    logger.warning("Broker heartbeat failed (%s); retrying", type(exc).__name__)
                self._check_helper()
        finally:
            self._stop_helper()

    # --- the lease's helper process (`heartbeat`) ----------------------------------------
    def _start_helper(self) -> None:
        with self._helper_lock:
            if self._stop.is_set():
                return
            self._helper_tried = time.monotonic()
            self._helper, why = heartbeat.start(
                self._pool_params, owner=self.id, key=scripts.OWNERS, interval=self.tick_interval
            )
        if self._helper is None:
            _warn_once(
                "Broker heartbeats run on a thread only: %s. A task holding the GIL longer than "
                "the heartbeat timeout can make this worker look dead and its tasks run twice.",
                why,
            )

    def _check_helper(self) -> None:
        """Start the helper again (at most every 30 s) if it has exited while this process lives."""
        helper = self._helper
        if helper is None:
            return
        code = helper.exited()
        if code is None or self._stop.is_set():
            return
        if time.monotonic() - self._helper_tried >= 30:
            heartbeat.stop(helper)  # reaped
            _warn_once("Broker heartbeat helper exited (status %s); starting it again", code)
            self._start_helper()

    def _stop_helper(self) -> None:
        with self._helper_lock:
            helper, self._helper = self._helper, None
        if helper is not None and os.getpid() == self.pid:
            heartbeat.stop(helper)

    def consuming(self, queue: str, consumes: bool = True) -> None:
        """Record that this process (no longer) consumes `queue`; Redis learns it at once."""
        with self._lock:
            if (queue in self.queues) == consumes:
                return
            if consumes:
                self.queues.add(queue)
            else:
                self.queues.discard(queue)
            listed = ",".join(sorted(self.queues))
        try:
            if listed:
                self.client.hset(scripts.CONSUMERS, self.id, listed)
            else:
                self.client.hdel(scripts.CONSUMERS, self.id)
        except redis.RedisError:
            pass  # the next tick writes it

    # --- settling messages ---------------------------------------------------------------
    def took(self, tag: str, task_id: str | None = None) -> None:
        with self._lock:
            self.held[tag] = task_id

    def settled(self, tag: str) -> None:
        """Forget a tag whose in-flight record a script already removed (a dead letter)."""
        with self._lock:
            self.held.pop(tag, None)

    def hand_over(self, task_id: str) -> str | None:
        """The tag of the message running `task_id`, for a result store that settles it in the
        same step (`common.transport.results`); None if this process holds no such message.

        The tag is forgotten here, so Celery's ack after it costs nothing; a store that then
        fails gives it back (`took`) and the ack settles it as usual.
        """
        with self._lock:
            for tag, held_id in self.held.items():
                if held_id == task_id:
                    del self.held[tag]
                    return tag
        return None

    def ack(self, tag: str) -> None:
        """Forget a finished message; an ack that cannot reach Redis is retried, never dropped.

        A dropped ack would leave the message owned by a live process until it exits, and
        then it would run again.
        """
        with self._lock:
            self.held.pop(tag, None)
        try:
            removed = self.client.hdel(self.inflight_key, tag)
        except redis.RedisError:
            with self._lock:
                self._pending_acks.add(tag)
            logger.warning("Could not acknowledge a message (broker unreachable); will retry")
            return
        if not removed:
            logger.warning(
                "Acknowledged message %s was no longer held by this worker: it was requeued "
                "after this worker missed its heartbeats, and may run again elsewhere",
                tag,
            )

    def _flush_acks(self) -> None:
        with self._lock:
            tags = list(self._pending_acks)
        if tags:
            self.client.hdel(self.inflight_key, *tags)
            with self._lock:
                self._pending_acks.difference_update(tags)

    def requeue(self, tags: Iterable[str]) -> int:
        tags = list(tags)
        if not tags:
            return 0
        with self._lock:
            for tag in tags:
                self.held.pop(tag, None)
        return int(self._requeue(keys=[self.inflight_key], args=[SEP, scripts.BELL_PREFIX, *tags]))

    def requeue_unknown(self) -> int:
        """After a lost fetch reply: requeue what Redis recorded but this process never got."""
        with self._lock:
            known = [*self.held, *self._pending_acks]
        n = int(self._requeue_unknown(keys=[self.inflight_key], args=[SEP, scripts.BELL_PREFIX, *known]))
        if n:
            logger.warning("Requeued %d message(s) whose delivery was cut off by a lost connection", n)
        return n

    def release(self) -> None:
        """A clean exit: put back what this process still holds, so no one waits for its lease.

        Runs after Celery's warm shutdown has let running tasks finish, so whatever is left
        was never started.
        """
        if os.getpid() != self.pid:
            return  # a forked child inherited this object; it owns nothing
        self._stop.set()
        self._stop_helper()  # before the lease is dropped, so it is not written again
        try:
            if self._pending_acks:
                self._flush_acks()
            with self._lock:
                self.held.clear()
            n = self._requeue_unknown(keys=[self.inflight_key], args=[SEP, scripts.BELL_PREFIX])
            self.client.zrem(scripts.OWNERS, self.id)
            self.client.hdel(scripts.CONSUMERS, self.id)
            if n:
                logger.info("Returned %d unstarted message(s) to their queues at exit", n)
        except redis.RedisError as exc:
            logger.warning(
                "Could not return held messages at exit (%s): they return after the heartbeat timeout",
                type(exc).__name__,
            )


_owner: Owner | None = None
_owner_lock = threading.Lock()
_warned: set[str] = set()


def _warn_once(message: str, *args: Any) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message, *args)


def owner_for(pool_params: dict[str, Any], *, dead_after: float, tick: float) -> Owner:
    """The process's owner, created on first use (and anew in a forked child)."""
    global _owner
    with _owner_lock:
        if _owner is None or _owner.pid != os.getpid():
            _owner = Owner(pool_params, dead_after=dead_after, tick=tick)
            atexit.register(_owner.release)
        return _owner


def current_owner() -> Owner | None:
    owner = _owner
    return owner if owner is not None and owner.pid == os.getpid() else None

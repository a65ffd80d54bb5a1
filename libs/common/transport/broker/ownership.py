"""Who holds which message: one owner per consuming process, kept alive by heartbeats.

A message a worker has taken stays in Redis, in its owner's in-flight hash, until the task
is acknowledged. The owner's heartbeat thread refreshes its lease every `tick` seconds, so a
task that runs for hours on a live worker is never handed to anyone else, whatever its age.
When a process dies (SIGKILL, OOM, a lost host) its heartbeats stop, and the next tick of any
live owner puts its messages back on their queues: recovery is bounded by the heartbeat
timeout, not by a visibility timeout that must exceed the longest task.

The same tick moves delayed messages (countdown, ETA, retry backoff) that are due onto their
queues, so nothing waits unacknowledged in a worker's memory. An entry there (or in a dead
owner's hash) that cannot go back on a queue is set aside in the same step and then
dead-lettered here (`drain_quarantine`): one bad entry never stops the others, nor the
heartbeat.

Every message that goes back on its queue (a requeue, a recovery, an unstarted prefetch
given back) has its return counted in Redis by that same step (`scripts.REDELIVERED`); the
transport marks it `redelivered` on its next delivery and dead-letters it past
TASK_MAX_REQUEUES. The owner remembers the count's key for the messages it holds, to remove
it when the message is settled.

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
from typing import Any, cast

import redis

from common.transport.broker import heartbeat, scripts
from common.transport.dead_letter_store import MALFORMED, DeadLetters

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
        # Held tags of messages that went back on their queue before -> (returns so far, the
        # key of their count in scripts.REDELIVERED), removed with the message when settled.
        self.redelivered: dict[str, tuple[int, str]] = {}
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
        recovered, promoted, *aside = self._tick(
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
        if aside and aside[0]:
            self.drain_quarantine()

    def drain_quarantine(self, limit: int = 100) -> int:
        """Dead-letter what the tick set aside (`scripts.QUARANTINE`), with the reason why.

        One owner at a time (a short lock); each entry is stored before it is removed, so a
        crash in between leaves a second copy, never none. Never raises: a failure here is
        logged, and the entries wait for the next tick.
        """
        lock = scripts.QUARANTINE + ".lock"
        moved = 0
        try:
            if not self.client.set(lock, self.id, nx=True, px=10_000):
                return 0
            store = DeadLetters(self.client)
            for _ in range(limit):
                entry = self.client.lindex(scripts.QUARANTINE, 0)
                if entry is None:
                    break
                why, queue, raw = _quarantined(cast(bytes, entry))
                store.add(queue=queue, reason=MALFORMED, detail=why, raw=raw, worker=self.id)
                self.client.lpop(scripts.QUARANTINE)
                moved += 1
                logger.error("Dead-lettered a broker entry that could not go on a queue (%s): %s", queue, why)
            if self.client.get(lock) == self.id.encode():
                self.client.delete(lock)
        except Exception:  # noqa: BLE001 - the heartbeat must go on; the entries wait
            logger.exception("Could not dead-letter the broker entries set aside; will retry")
        return moved

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

    def redelivery(self, tag: str, count: int, key: str) -> None:
        """Record that the held message `tag` went back on its queue `count` times before."""
        with self._lock:
            self.redelivered[tag] = (count, key)

    def returns(self, tag: str) -> int:
        """How many times the held message `tag` went back on its queue before (0: never)."""
        return self.redelivered.get(tag, (0, ""))[0]

    def settled(self, tag: str) -> None:
        """Forget a tag whose in-flight record a script already removed (a dead letter)."""
        with self._lock:
            self.held.pop(tag, None)
            count = self.redelivered.pop(tag, None)
        if count is not None:
            try:
                self.client.hdel(scripts.REDELIVERED, count[1])
            except redis.RedisError:
                pass  # the count expires with its hash (scripts.REDELIVERED_TTL_MS)

    def let_go(self, tags: Iterable[str]) -> None:
        """Forget tags that could not be given back now: Redis still holds them, and the next
        fetch gives them back (`requeue_unknown`)."""
        with self._lock:
            for tag in tags:
                self.held.pop(tag, None)
                self.redelivered.pop(tag, None)
        self.lost_fetch = True

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
                    count = self.redelivered.pop(tag, None)
                    break
            else:
                return None
        if count is not None:  # the store's step does not know the count: remove it first
            try:
                self.client.hdel(scripts.REDELIVERED, count[1])
            except redis.RedisError:
                self.took(tag, task_id)
                self.redelivery(tag, *count)
                return None  # Celery's ack settles it, and removes the count
        return tag

    def holding(self, task_id: str) -> str | None:
        """The tag of the held message running `task_id`, or None (`deferral`)."""
        with self._lock:
            return next((tag for tag, held_id in self.held.items() if held_id == task_id), None)

    def forget(self, tag: str) -> None:
        """Forget a tag a script moved elsewhere (the delayed set), its count kept in Redis:
        Celery's ack after it then costs nothing."""
        with self._lock:
            self.held.pop(tag, None)
            self.redelivered.pop(tag, None)

    def ack(self, tag: str) -> None:
        """Forget a finished message; an ack that cannot reach Redis is retried, never dropped.

        A dropped ack would leave the message owned by a live process until it exits, and
        then it would run again.
        """
        with self._lock:
            self.held.pop(tag, None)
            count = self.redelivered.get(tag)
        try:
            if count is None:
                removed = self.client.hdel(self.inflight_key, tag)
            else:
                pipe: Any = self.client.pipeline(transaction=True)
                removed = pipe.hdel(self.inflight_key, tag).hdel(scripts.REDELIVERED, count[1]).execute()[0]
                with self._lock:
                    self.redelivered.pop(tag, None)
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
            with self._lock:
                counts = [self.redelivered[t][1] for t in tags if t in self.redelivered]
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(self.inflight_key, *tags)
            if counts:
                pipe.hdel(scripts.REDELIVERED, *counts)
            pipe.execute()
            with self._lock:
                self._pending_acks.difference_update(tags)
                for tag in tags:
                    self.redelivered.pop(tag, None)

    def requeue(self, tags: Iterable[str]) -> int:
        tags = list(tags)
        if not tags:
            return 0
        with self._lock:
            for tag in tags:
                self.held.pop(tag, None)
                self.redelivered.pop(tag, None)  # its count is in Redis, and goes up by one
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
                self.redelivered.clear()
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


def _quarantined(entry: bytes) -> tuple[str, str, bytes]:
    """(why, queue, raw message) of a `scripts.QUARANTINE` entry; the queue is
    `scripts.DELAYED` when the entry named none."""
    why, _, rest = entry.partition(b"\n")
    queue, _, raw = rest.partition(b"\n")
    return why.decode(errors="replace"), queue.decode(errors="replace") or scripts.DELAYED, raw


_owner: Owner | None = None  # the first this process made: its broker's (metrics, inspect)
_owners: dict[tuple[str, ...], Owner] = {}
_owner_lock = threading.Lock()
_warned: set[str] = set()


def _warn_once(message: str, *args: Any) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message, *args)


def _server_of(pool_params: dict[str, Any]) -> tuple[str, ...]:
    """Which Redis (and as whom) a connection reaches: one owner per server a process uses."""
    keys = ("host", "port", "db", "path", "username", "service_name")
    cls = pool_params.get("connection_class")
    return (*(str(pool_params.get(k)) for k in keys), getattr(cls, "__qualname__", str(cls)))


def owner_for(pool_params: dict[str, Any], *, dead_after: float, tick: float) -> Owner:
    """This process's owner on the Redis `pool_params` reach, created on first use (and anew
    in a forked child).

    One per server, not one per process: an owner built from the first connection a process
    opened (a consumer through a proxy that later went away, another Redis) would otherwise
    take every later connection's acks, requeues and heartbeats to the wrong server.
    """
    global _owner
    key = _server_of(pool_params)
    with _owner_lock:
        if _owner is not None and _owner.pid != os.getpid():
            _owners.clear()  # a forked child: the parent's owners are not its own
            _owner = None
        owner = _owners.get(key)
        if owner is None:
            owner = _owners[key] = Owner(pool_params, dead_after=dead_after, tick=tick)
            atexit.register(owner.release)
            if _owner is None:
                _owner = owner
        return owner


def current_owner() -> Owner | None:
    owner = _owner
    return owner if owner is not None and owner.pid == os.getpid() else None

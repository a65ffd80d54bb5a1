"""kombu's Redis transport, made reliable: atomic fetch, owned in-flight messages, delayed
messages kept in Redis, dead letters instead of crashes, and one client per channel.

What changes against kombu's own transport:
- Taking a message is one Lua call that pops it and records it in this process's in-flight
  hash (`scripts.FETCH`); kombu's BRPOP-then-HSET can lose a message between the two.
  Idle consumers block on a per-queue "bell" list that every publish rings, not on the
  queue itself, so blocking never takes a message out of Redis.
- In-flight messages belong to a heartbeating owner (`ownership.Owner`), not to a
  visibility timeout: a killed worker's messages come back within the heartbeat timeout,
  and a long task on a live worker is never handed out twice.
- A message with a future ETA (countdown, eta, retry backoff) goes to a sorted set and is
  moved onto its queue when due, instead of sitting unacknowledged in a worker's memory.
- A message the worker cannot run (undecodable, malformed, wrong content type, unknown
  task, arguments that break the contract, too large) is dead-lettered with its reason and
  acknowledged in the same step; the worker goes on with the next one.
- kombu builds a new `redis.Redis` for each command; since redis-py 5 that construction
  was a fifth to a third of a worker's CPU (redis-py #3624). One client per channel here.

Registered under kombu's `redis`/`rediss` aliases (`install()`), so URLs stay as they are.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any, cast

from celery.worker import state as worker_state
from kombu.transport import TRANSPORT_ALIASES, _transport_cache, virtual  # type: ignore[attr-defined]
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from redis.commands.core import Script

from common.transport import protocol
from common.transport.broker import ownership, round_trip, scripts, sockets, uniqueness
from common.transport.broker.messages import due_ms, marked_redelivered, names_in, task_named_in, task_of
from common.transport.broker.qos import QoS
from common.transport.broker.round_trip import ROUND_TRIP_MESSAGES, one_round_trip
from common.transport.dead_letter_store import (
    CRASHED_CONSUMER,
    DEFAULT_MAX_ENTRY_BYTES,
    DROPPED,
    REQUEUE_LIMIT,
    TOO_LARGE,
    UNDECODABLE,
    DeadLetters,
    Rejection,
)

logger = logging.getLogger(__name__)

# Messages one FETCH may take, when the consumer's prefetch leaves room for that many.
FETCH_BATCH = 16


class Channel(kombu_redis.Channel):
    QoS = QoS

    heartbeat_timeout: float = 10.0
    heartbeat_interval: float = 0.5
    intake: str | None = None  # module with check(payload, queue) / settle(rejection)
    dead_letter_cap: int = 10_000
    dead_letter_retention: float = 7 * 24 * 3600
    max_requeues: int = 10  # returns to its queue before a message is dead-lettered
    dead_letter_max_bytes: int = 64 * 1024 * 1024
    max_payload_bytes: int = 1024 * 1024

    from_transport_options = kombu_redis.Channel.from_transport_options + (
        "heartbeat_timeout",
        "heartbeat_interval",
        "intake",
        "dead_letter_cap",
        "dead_letter_retention",
        "max_requeues",
        "dead_letter_max_bytes",
        "max_payload_bytes",
    )

    _sync_client: Any = None
    # kombu's Channel sets these; its stubs (celery-types) leave its private members out.
    connection_errors: tuple[type[BaseException], ...]
    _closing: bool
    _in_poll: Any
    _pool: Any
    _async_pool: Any
    _queue_cycle: Any
    _expires: dict[str, int]
    _q_for_pri: Callable[[str, int], str]
    _flush_brpop_reauth: Callable[[], None]
    _reliable_poll = False
    _poll_queues: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._noack_queues: set[str] = set()
        super().__init__(*args, **kwargs)
        self._fetch_script: Script | None = None
        self._put_script: Script | None = None
        self._intake_module: ModuleType | None = importlib.import_module(self.intake) if self.intake else None

    # --- one client per channel --------------------------------------------------------
    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return cast(Any, super())._create_client(asynchronous=True)
        client = self._sync_client
        # kombu replaces its pool after a fork or a lost connection: follow it.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = cast(Any, super())._create_client(asynchronous=False)
        return client

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's connection parameters, with every socket bounded where the transport options
        leave it unbounded: a read times out (`sockets.DEFAULT_SOCKET_TIMEOUT`) and a dead peer is
        found by TCP keepalive. The channel's clients, its BRPOP and pub/sub connections
        (`_create_client(asynchronous=True)`) and the process's owner (`owner`) all use these.
        """
        return sockets.bounded(cast(Any, super())._connparams(asynchronous=asynchronous))

    def close(self) -> None:
        """Close all the way, and within a bounded time, even when Redis is gone, hung or
        half-open.

        kombu's close stops at the first connection error (reading the poll in flight, or
        deleting the pidbox reply queue) and leaves the channel open after
        `Connection.collect` has cleared `transport.client`; the second close then died in
        `_connparams` on `client.hostname` ("Unrecoverable error", half of Redis restarts).
        A poll in flight is dropped unread, as reading it from a hung Redis costs a socket
        timeout: on a task queue it holds a bell token, never a message; on a reply queue
        (no acks) the reply was for this closing consumer anyway. What close still sends
        (deleting auto-delete bindings) is clean-up: every socket of the channel gets at most
        sockets.CLOSE_TIMEOUT per read first, so a half-open connection costs seconds, not forever
        (Celery's own bound reaches only `client` and `subclient`, not the channel's pool).
        """
        self._sync_client = None
        timeout = float(self.socket_timeout or sockets.DEFAULT_SOCKET_TIMEOUT)
        self._bound_sockets(min(timeout, sockets.CLOSE_TIMEOUT))
        if self._in_poll:
            self._in_poll = None
            self._reliable_poll = False
            try:
                self.client.connection.disconnect()
            except Exception:  # noqa: BLE001 - closing; the socket may be gone already
                pass
        super().close()

    def _bound_sockets(self, timeout: float) -> None:
        """Give every open socket of this channel (its clients' and its pools') a read timeout
        of at most `timeout`. Best effort: never raises, and connects nothing."""
        connections: list[Any] = []
        for name in ("client", "subclient"):
            client = self.__dict__.get(name)  # cached only: the property would connect
            connections.append(getattr(client, "connection", None))
        for pool in (self._pool, self._async_pool):
            for attr in ("_available_connections", "_in_use_connections"):
                try:
                    connections.extend(list(getattr(pool, attr, None) or ()))
                except Exception:  # noqa: BLE001 - another thread changed it: bound what we have
                    pass
        for connection in connections:
            sock = getattr(connection, "_sock", None)
            if sock is None:
                continue
            try:
                current = sock.gettimeout()
                if current is None or current > timeout:
                    sock.settimeout(timeout)
            except Exception:  # noqa: BLE001 - closed under us
                pass

    def queue_delete(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().queue_delete(queue, *args, **kwargs)
        except self.connection_errors:
            if not self._closing:
                raise
            return None  # closing without Redis: the auto-delete binding is left behind

    # --- ownership ---------------------------------------------------------------------
    _owner: ownership.Owner | None = None

    @property
    def owner(self) -> ownership.Owner:
        """The process's owner, cached: read on every fetch, and building it costs ~60 us."""
        owner = self._owner
        if owner is None or owner.pid != os.getpid():
            owner = self._owner = ownership.owner_for(
                self._connparams(),
                dead_after=float(self.heartbeat_timeout),
                tick=float(self.heartbeat_interval),
            )
        return owner

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._noack_queues.add(queue)  # replies, not tasks: nothing to own or recover
        else:
            # Hold a lease (and start heartbeats) before consuming; say what is consumed.
            self.owner.consuming(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._noack_queues and self._owner is not None:
            self._owner.consuming(queue, False)
        return result

    # --- publishing ----------------------------------------------------------------------
    def publishing_in_one_round_trip(self) -> AbstractContextManager[None]:
        """`one_round_trip()`, for callers that hold a channel (kombu's producer API)."""
        return one_round_trip()

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        pri = self._get_message_priority(message, reverse=False)
        key = self._q_for_pri(queue, pri)
        due = due_ms(message)
        # When it became runnable (its due time, if delayed): the queue's oldest-message age
        # (common.observability.queues) is how long work has waited for a worker.
        runnable = due / 1000 if due is not None else round(time.time(), 3)
        message.setdefault("properties", {})["published_at"] = runnable
        payload = dumps(message)
        bell = scripts.BELL_PREFIX + queue
        expires = self._expires.get(queue) if self._expires else None
        if expires is None and (unique := uniqueness.header_of(message)) is not None:  # a unique task
            return uniqueness.put(self, message, unique, key, bell, payload, due)
        batch = self._round_trip_pipeline()
        if due is None and expires is None:
            # The common case: the message and its queue's wake-up call in one EVALSHA.
            if batch is not None:
                self._put_script_on(batch)(keys=[key, bell], args=[payload], client=batch)
                return
            with self.conn_or_acquire() as client:
                self._put_script_on(client)(keys=[key, bell], args=[payload], client=client)
            return
        commands: list[tuple[str, tuple[Any, ...]]]
        if due is not None:
            commands = [("zadd", (scripts.DELAYED, {f"{key}\n{payload}": due}))]
        else:
            commands = [("lpush", (key, payload)), ("lpush", (bell, 1)), ("ltrim", (bell, 0, 0))]
        if expires is not None:
            commands += [("pexpire", (self._q_for_pri(queue, p), expires)) for p in self.priority_steps]
        if batch is not None:
            for name, args in commands:
                getattr(batch, name)(*args)
            return
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for name, args in commands:
                getattr(pipe, name)(*args)
            pipe.execute()

    def _round_trip_pipeline(self) -> Any:
        """The pipeline of this thread's `one_round_trip` block, made on first use; else None."""
        if not getattr(round_trip.state, "open", False):
            return None
        pipeline = round_trip.state.pipeline
        if pipeline is None:
            pipeline = round_trip.state.pipeline = self.client.pipeline(transaction=False)
        elif len(pipeline) >= ROUND_TRIP_MESSAGES:
            pipeline.execute()  # emptied: the next messages go in the next round trip
        return pipeline

    def _put_script_on(self, client: Any) -> Script:
        if self._put_script is None:
            self._put_script = client.register_script(scripts.PUT)
        return self._put_script

    # --- consuming -----------------------------------------------------------------------
    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if any(q in self._noack_queues for q in queues):
            cast(Any, super())._brpop_start(timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        self._reliable_poll = True
        self._poll_queues = list(queues)
        self._in_poll = self.client.connection
        # Block on the queues' bells, never on the queues: the message stays in Redis until
        # FETCH moves it to the in-flight hash. The timeout also picks up messages from
        # producers that do not ring (stock kombu): at most one second late. A live Redis
        # answers within that timeout; a reply overdue past `_brpop_deadline` means the
        # connection is half-open, and the event loop drops it (`_drop_overdue_brpop`).
        bells = [scripts.BELL_PREFIX + q for q in queues]
        self._brpop_wait = float(timeout or 0)
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command("BRPOP", *bells, timeout or 0)

    _brpop_wait: float = 0.0

    def _brpop_deadline(self) -> float:
        """Seconds after which a BRPOP of ours without a reply means a half-open connection:
        its server-side timeout, plus a socket timeout for the reply to arrive (as any other
        command gets). Not used for a BRPOP without a timeout: kombu's health check applies."""
        return self._brpop_wait + float(self.socket_timeout or sockets.DEFAULT_SOCKET_TIMEOUT)

    def _drop_overdue_brpop(self) -> bool:
        """Drop the BRPOP connection if its reply is overdue (`_brpop_deadline`); True if dropped.

        On a half-open connection the socket never becomes readable, so the event loop never
        reads it and no socket timeout applies: without this, the worker waits on it until
        kombu's health check (`brpop_timeout + 2 * health_check_interval`, 51 s by default).
        Only our own polls, whose reply is a bell token and never a message, are dropped;
        the next tick reconnects and polls again, and the channel's other connections fail
        within their socket timeout when next used. Called by `Transport`'s event loop timer.
        """
        connection = self._in_poll
        sent = getattr(self, "_brpop_sent_at", None)
        if not connection or not self._reliable_poll or sent is None or not self._brpop_wait:
            return False
        waited = time.monotonic() - sent
        if waited < self._brpop_deadline():
            return False
        sock = getattr(connection, "_sock", None)
        if sock is None or cast(Any, kombu_redis)._socket_readable(sock):
            return False  # the reply is there (or the socket is gone): the loop reads it
        logger.warning(
            "Redis did not answer a BRPOP for %.1f s (it answers within %.0f s): the connection "
            "is half-open; dropping it to reconnect",
            waited,
            self._brpop_wait,
        )
        self._reliable_poll = False
        try:
            connection.disconnect()  # kombu forgets the poll and unregisters the socket
        finally:
            if self._in_poll is connection:
                self._in_poll = None
        return True

    def _brpop_read(self, **options: Any) -> bool:
        if not self._reliable_poll:
            return cast(bool, cast(Any, super())._brpop_read(**options))
        try:
            try:
                self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None
            self._reliable_poll = False
            self._flush_brpop_reauth()
        return self._fetch_and_deliver(self._poll_queues)

    def _fetch_and_deliver(self, queues: list[str]) -> bool:
        owner = self.owner
        lists = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        keys = [owner.inflight_key, *dict.fromkeys(lists)]
        with self.conn_or_acquire() as client:
            if self._fetch_script is None:
                self._fetch_script = client.register_script(scripts.FETCH)
            if owner.lost_fetch:
                owner.requeue_unknown()
                owner.lost_fetch = False
            for _ in range(100):  # poison in a row is dead-lettered; then the loop breathes
                try:
                    reply = self._fetch_script(
                        keys=keys,
                        args=[self.sep, scripts.BELL_PREFIX, self._fetch_limit(), 1],
                        client=client,
                    )
                except self.connection_errors:
                    # Redis may have run FETCH and lost only the reply: reconcile before the
                    # next fetch, on whichever channel the reconnected consumer opens.
                    owner.lost_fetch = True
                    raise
                if not reply:
                    raise virtual.Empty()
                # Each message: its list, raw item, tag, and how many times it went back on
                # its queue before (with the key of that count, to remove it when settled).
                batch = [
                    (
                        bytes_to_str(reply[k]),
                        reply[k + 1],
                        bytes_to_str(reply[k + 2]),
                        int(reply[k + 3]),
                        bytes_to_str(reply[k + 4]),
                    )
                    for k in range(0, len(reply), 5)
                ]
                for _, _, tag, returns, count_key in batch:
                    owner.took(tag)
                    if returns:
                        owner.redelivery(tag, returns, count_key)
                delivered = False
                ceiling = 2 * int(self.max_payload_bytes) + 64 * 1024 if self.max_payload_bytes else 0
                for n, (list_key, raw, tag, returns, _) in enumerate(batch):
                    if n and _stopping():
                        # A shutdown began while the solo pool ran the batch's last task:
                        # what has not started goes back now, not after the batch.
                        self._give_back([m[2] for m in batch[n:]])
                        return True
                    try:
                        if returns > int(self.max_requeues):
                            # A Reject(requeue=True) loop, or a message whose every run
                            # ends its worker: bounded by construction.
                            why = (
                                f"went back on its queue {returns} times, over TASK_MAX_REQUEUES="
                                f"{int(self.max_requeues)} (requeued by its task, or recovered from "
                                "a worker that stopped)"
                            )
                            rejection = Rejection(REQUEUE_LIMIT, why, *names_in(raw, ceiling))
                            self._dead_letter(rejection, raw, list_key.split(self.sep, 1)[0], tag)
                            continue
                        if returns:
                            raw = marked_redelivered(raw, ceiling)
                        delivered = self._deliver_one(list_key, raw, tag) or delivered
                    except BaseException:
                        self._give_back([m[2] for m in batch[n + 1 :]])
                        raise
                if delivered:
                    return True
        raise virtual.Empty()

    def _fetch_limit(self) -> int:
        """How many messages one FETCH may take: the free prefetch slots (kombu's estimate),
        at least one, at most FETCH_BATCH."""
        free = cast(Any, self.qos).can_consume_max_estimate()
        return FETCH_BATCH if free is None else max(1, min(int(free), FETCH_BATCH))

    def _deliver_one(self, list_key: str, raw: bytes, tag: str) -> bool:
        """Hand one fetched message to the consumer; False if it was dead-lettered or dropped."""
        owner = self.owner
        queue = list_key.split(self.sep, 1)[0]
        try:
            payload = self._admit(raw, queue, tag)
        except Rejection as rejection:
            if rejection.reason in DROPPED:  # an outbox copy, or revoked (REVOKED stored)
                owner.ack(tag)
            else:
                self._dead_letter(rejection, raw, queue, tag)
            return False
        except self.connection_errors:
            raise  # the intake could not reach Redis: the message stays held, not judged
        except Exception as exc:  # noqa: BLE001 - whatever a message makes the intake raise
            # Nothing a message holds may end the consumer: an error here used to escape into
            # kombu's loop ("Unrecoverable error"), and the redelivered message killed the
            # restarted worker in turn.
            logger.exception("Admitting a message from queue %s raised; dead-lettering it", queue)
            crashed = Rejection(
                CRASHED_CONSUMER, f"admitting it raised {type(exc).__name__}", *task_named_in(raw)
            )
            self._dead_letter(crashed, raw, queue, tag)
            return False
        owner.took(tag, task_of(payload)[1])  # its result store may settle it (Owner.hand_over)
        self._queue_cycle.rotate(queue)
        try:
            self.connection._deliver(payload, queue)
        except self.connection_errors:
            raise
        except Exception as exc:  # Celery's handler raised: the worker must live on
            logger.exception("Handling a message from queue %s raised; dead-lettering it", queue)
            cast(Any, self.qos)._quick_ack(tag)
            self._dead_letter(
                Rejection(CRASHED_CONSUMER, f"{type(exc).__name__}: {exc}", *task_of(payload)),
                raw,
                queue,
                tag,
            )
        return True

    def _give_back(self, tags: list[str]) -> None:
        """Requeue fetched messages that were never handed over (a batch cut short).

        If Redis cannot take them now, the next fetch does (`lost_fetch`), or the exit, or
        the heartbeat timeout after a crash: they are never left owned by a live process.
        """
        if not tags:
            return
        owner = self.owner
        try:
            owner.requeue(tags)  # each counted as a return: marked redelivered when next taken
        except Exception:  # noqa: BLE001 - Redis away: reconciled on the next fetch
            owner.let_go(tags)

    def _admit(self, raw: bytes, queue: str, tag: str) -> dict[str, Any]:
        """The message as kombu expects it, or a `Rejection` saying why it cannot run."""
        # A guard before decoding, against memory blow-ups: the arguments' own limit, which
        # the producer applies too, is checked on the decoded body (common.transport.intake); the whole
        # message is larger (base64, headers, canvas), hence the margin.
        ceiling = self._ceiling()
        if ceiling and len(raw) > ceiling:
            raise Rejection(
                TOO_LARGE,
                f"message of {len(raw):,} bytes, far over TASK_MAX_PAYLOAD_BYTES={self.max_payload_bytes:,}",
                *task_named_in(raw),
            )
        try:
            payload = protocol.loads_bounded(bytes_to_str(raw), object_hook=kombu_json.object_hook)
        except protocol.MalformedMessage as exc:
            raise Rejection(UNDECODABLE, str(exc), *task_named_in(raw)) from None
        except ValueError:  # not JSON, or not UTF-8
            raise Rejection(UNDECODABLE, "not JSON (or not UTF-8)") from None
        properties = payload.get("properties") if isinstance(payload, dict) else None
        headers = payload.get("headers", {}) if isinstance(payload, dict) else None
        if not isinstance(properties, dict) or not isinstance(headers, dict) or "body" not in payload:
            raise Rejection(UNDECODABLE, "JSON, but not a message envelope (body, headers, properties)")
        info = properties.get("delivery_info")
        if not isinstance(info, dict):
            properties["delivery_info"] = info = {}
        info.setdefault("exchange", "")
        info.setdefault("routing_key", queue)
        properties["delivery_tag"] = tag
        if self._intake_module is not None:
            self._intake_module.check(payload, queue)
        return cast("dict[str, Any]", payload)  # an envelope: checked above

    def _ceiling(self) -> int:
        """Bytes over which a message is refused undecoded (0: no limit)."""
        return 2 * int(self.max_payload_bytes) + 64 * 1024 if self.max_payload_bytes else 0

    def _dead_letter(self, rejection: Rejection, raw: bytes, queue: str, tag: str) -> None:
        owner = self.owner
        entry = DeadLetters(
            owner.client,
            cap=int(self.dead_letter_cap),
            retention=float(self.dead_letter_retention),
            max_bytes=int(self.dead_letter_max_bytes),
            max_entry_bytes=self._ceiling() or DEFAULT_MAX_ENTRY_BYTES,
        ).add(
            queue=queue,
            reason=rejection.reason,
            detail=rejection.detail,
            raw=raw,
            worker=owner.id,
            task=rejection.task,
            task_id=rejection.task_id,
            inflight=(owner.inflight_key, tag),
        )
        owner.settled(tag)
        logger.error(
            "Dead-lettered a message from queue %s (%s, entry %s): %s",
            queue,
            rejection.task or "no task name",
            entry.id,
            rejection,
        )
        if rejection.task_id and self._intake_module is not None:
            try:
                self._intake_module.settle(rejection)
            except Exception:  # the dead letter is stored; a caller's .get() may wait
                logger.exception("Could not record FAILURE for dead-lettered task %s", rejection.task_id)


def _stopping() -> bool:
    """Celery's worker has begun a warm or cold shutdown (never, outside a worker)."""
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


class Transport(kombu_redis.Transport):
    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        # A BRPOP reply overdue past its deadline (a half-open connection) is dropped within
        # about a second of it (`Channel._drop_overdue_brpop`), not after kombu's health check.
        cycle: Any = self.cycle
        tref = getattr(cycle, "_jobs_brpop_deadline_tref", None)
        if tref is not None:
            tref.cancel()  # a previous connection's, as kombu does for its own timers
        cycle._jobs_brpop_deadline_tref = loop.call_repeatedly(
            sockets.BRPOP_CHECK_INTERVAL, _drop_overdue_brpops, cycle
        )


def _drop_overdue_brpops(cycle: Any) -> None:
    for channel in list(cycle._channels):
        drop = getattr(channel, "_drop_overdue_brpop", None)
        if drop is not None:
            try:
                drop()
            except Exception:  # noqa: BLE001 - a timer must not end the event loop
                logger.debug("Dropping an overdue BRPOP failed", exc_info=True)


def install() -> None:
    """Make kombu's `redis://`, `rediss://` (TLS unchanged) and `sentinel://` URLs use this transport."""
    for alias, target in (
        ("redis", f"{__name__}:Transport"),
        ("rediss", f"{__name__}:Transport"),
        ("sentinel", "common.transport.broker.sentinel:SentinelTransport"),
    ):
        TRANSPORT_ALIASES[alias] = target
        # kombu caches what an alias resolved to: a `redis://` resolved earlier in this
        # process would otherwise keep kombu's stock class.
        _transport_cache.pop(alias, None)

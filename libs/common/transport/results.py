"""The Redis result backend: Celery's, with each result stored in one atomic round trip.

Celery guards against a lost or duplicate delivery overwriting a finished task's SUCCESS by
reading the stored result before writing (`_store_result`: GET, then MULTI SET PUBLISH). That
is two round trips per state change, and a race: another worker can write between the read
and the write. Here one Lua script does the check, the write and the notification, so a
result costs one round trip and SUCCESS really is final.

The check runs in Redis, so it can only read what Lua can read: plain JSON. Celery's own
check decodes in Python and works with any serializer or compression; ours would not (with
`result_compression` or a msgpack/yaml/pickle `result_serializer` the script cannot see the
SUCCESS and a late FAILURE or STARTED replaced it). The platform is JSON-only anyway, so the
backend refuses those settings when it is built (`ResultSettingsError`) instead of quietly
losing the guarantee. For the one JSON value Lua's cjson rejects (a string holding a lone
surrogate) the script also recognises SUCCESS by the meta's first key, which Celery always
writes first.

Subscriptions. A producer subscribes to a result's channel when it waits for it (`.get()`,
`.then()`), not at every send as Celery does: fan-outs, the outbox relay and the web side send
and never wait, and a send then costs no SUBSCRIBE/UNSUBSCRIBE. Each subscription is
released as Celery's are: when the result is ready (`.get()` returning or raising), on
`.forget()`, and when the last result object waiting on it is collected. A notification that
arrives after its subscription was released (published between the waiter's SUBSCRIBE and
its first read, which already found the result) is dropped, not kept in Celery's buffer of
unclaimed results. Each new subscription first reads the replies its connection already holds, so
redis-py's own record of channels does not grow either. A long-lived producer's subscriptions
stay flat: one `.get()` after another leaves no channel subscribed
(tests/test_result_subscriptions.py against a real worker: 2,000 `.get()`s in the suite,
10,000 with RESULT_SUBSCRIPTION_GETS=10000). Celery's own subscribe-at-send is one transport option away,
`result_backend_transport_options={"subscribe_on_send": True}`, for a caller that wants a
result's channel subscribed before its task can run; then a result never waited for is
released when its result object goes away, as with stock Celery.

Selected by `result_backend` in `common.celery_config` (`common.transport.results:RedisBackend+redis://…`).
"""

from __future__ import annotations

import time
from typing import Any, cast

from celery import states
from celery.backends.asynchronous import _waiting_on  # type: ignore[attr-defined]
from celery.backends.base import BackendStoreError  # type: ignore[attr-defined]
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.backends.redis import ResultConsumer as CeleryResultConsumer  # type: ignore[attr-defined]
from celery.backends.redis import SentinelBackend as CelerySentinelBackend
from celery.exceptions import ImproperlyConfigured
from kombu.utils.encoding import bytes_to_str
from kombu.utils.objects import cached_property

from common.transport import batches
from common.transport.broker import ownership

# KEYS[1] result key; ARGV[1] encoded meta (JSON), ARGV[2] expiry in seconds (0: none).
# KEYS[2], ARGV[3] (optional): the worker's in-flight hash and the message's tag, settled in
# the same step: a SUCCESS is never stored with its message still owed a run.
# SUCCESS is recognised by decoding, or, where cjson refuses valid JSON (a lone surrogate
# escape such as "\ud800"), by `"status"` being the first key, as Celery's
# `_get_result_meta` and `_store_result` below always write it.
STORE_UNLESS_SUCCEEDED = """
if KEYS[2] then redis.call('HDEL', KEYS[2], ARGV[3]) end
local current = redis.call('GET', KEYS[1])
if current then
    if string.find(current, '^%s*{%s*"status"%s*:%s*"SUCCESS"') then
        return 0
    end
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
        return 0
    end
end
local expires = tonumber(ARGV[2])
if expires > 0 then
    redis.call('SETEX', KEYS[1], expires, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


JSON_NAMES = frozenset({"json", "application/json"})


class ResultSettingsError(ImproperlyConfigured):
    """A result setting that would let a late state overwrite SUCCESS; names the setting."""


def refuse_non_json_results(conf: Any, serializer: str | None = None, accept: Any = None) -> None:
    """Raise `ResultSettingsError` unless results are stored as plain, uncompressed JSON.

    Mirrors how Celery's `BaseBackend.__init__` resolves each value (an argument first, then
    the app's configuration), and runs before it, so an uninstalled serializer (msgpack)
    gets this message instead of a bare KeyError.
    """
    why = "the Lua script that keeps SUCCESS final can only read plain JSON"
    serializer = serializer or conf.result_serializer
    if serializer != "json":
        raise ResultSettingsError(
            f"result_serializer={serializer!r} is not supported by {BACKEND}: {why}. "
            "Set result_serializer='json' (the platform is JSON-only)."
        )
    compression = conf.get("result_compression")
    if compression:
        raise ResultSettingsError(
            f"result_compression={compression!r} is not supported by {BACKEND}: {why}. "
            "Leave result_compression unset (None)."
        )
    if accept is None:
        accept, name = conf.result_accept_content, "result_accept_content"
        if accept is None:
            accept, name = conf.accept_content, "accept_content (result_accept_content is unset)"
    else:
        name = "accept"
    others = sorted(set(accept or ()) - JSON_NAMES)
    if others:
        raise ResultSettingsError(
            f"{name}={list(accept)!r} is not supported by {BACKEND}: {why}, and a non-JSON "
            f"result ({', '.join(others)}) read back from Redis could run code or replace a "
            "SUCCESS. Set result_accept_content=['json']."
        )


class ResultConsumer(CeleryResultConsumer):
    """Celery's `.get()` waiter, which also re-reads what it waits for every REREAD seconds.

    A producer here subscribes to a result when it starts waiting, not when it sends
    (`RedisBackend.on_task_call`), and a notification published while that late subscription
    is still settling can be missed: a chord's `.get()` then waited 4 to 13 s, in about one
    run of five, until a reconnect re-read it. A missed notification now costs at most REREAD.
    """

    REREAD = 0.25
    _reread_at = 0.0

    def on_state_change(self, meta: dict[str, Any], message: Any) -> None:
        """Celery's, but a ready result nobody waits for or subscribes to any more is dropped.

        Celery keeps a ready result with no waiter (in `backend._pending_messages`, up to 8192
        of them) for a `.get()` that subscribed at send and has not started waiting yet. Here a
        waiter registers before it subscribes, so such a result is a late copy: its `.get()`
        already read it (the re-read below, or the first read of `.get()` itself) and released
        the channel, and the notification published meanwhile arrives after. Kept, one more
        entry per such `.get()` would pile up in a long-lived producer.
        """
        if meta.get("status") in states.READY_STATES and not self._wanted(meta["task_id"]):
            if self.on_message:
                self.on_message(meta)
            return
        super().on_state_change(meta, message)

    # Replies read, at most, before each new subscription (see `consume_from`).
    READ_AHEAD = 64

    def consume_from(self, task_id: str) -> None:
        """Celery's, after reading what the pub/sub connection already holds.

        A `.get()` whose result is already stored returns without reading its connection, so
        the replies to its SUBSCRIBE and UNSUBSCRIBE stay unread, and redis-py keeps the
        channel in `PubSub.channels` until it reads the UNSUBSCRIBE reply. A producer that
        only ever collects finished results piled them up: a backlog in Redis' output buffer
        for this client, and channels redis-py would subscribe again on a reconnect. Reading
        what has arrived (without waiting) keeps both to the last few `.get()`s.
        """
        self._read_available()
        super().consume_from(task_id)

    def _read_available(self) -> None:
        with self._locked():
            pubsub = self._pubsub
            if pubsub is None or self._socket_waiter:
                return  # none yet, or another thread is reading it
            for _ in range(self.READ_AHEAD):
                if not self._drain_one(pubsub, 0):
                    return

    def _wanted(self, task_id: str) -> bool:
        """Someone waits on `task_id`, or its channel is still subscribed (subscribe-on-send)."""
        if _waiting_on(self._pending_results, task_id):
            return True
        key = self._get_key_for_task(task_id)
        return key in self.subscribed_to and key not in self._pending_unsubscribe

    def drain_events(self, timeout: float | None = None) -> None:
        super().drain_events(timeout=timeout if timeout is None else min(timeout, self.REREAD))
        now = time.monotonic()
        if now >= self._reread_at:
            self._reread_at = now + self.REREAD
            keys = list(self.subscribed_to)
            try:
                stored = self.backend.client.mget(keys) if keys else []
            except self.backend.connection_errors:
                return  # Redis away: the subscription's own reconnect re-reads (Celery's)
            for raw in stored:
                meta = self._decode_result(raw) if raw else None
                if meta and meta.get("status") in states.READY_STATES:  # progress is not re-sent
                    self.on_state_change(meta, None)


class RedisBackend(CeleryRedisBackend):
    """Celery's Redis backend with an atomic store, no task arguments; refuses non-JSON results."""

    ResultConsumer = ResultConsumer
    # Celery's backend sets these; its stubs (celery-types) leave them out.
    _transport_options: dict[str, Any]
    connparams: dict[str, Any]
    expires: float | None
    failure_expires: float | None

    def __init__(
        self, *args: Any, app: Any, serializer: str | None = None, accept: Any = None, **kwargs: Any
    ) -> None:
        refuse_non_json_results(app.conf, serializer, accept)
        super().__init__(*args, app=app, serializer=serializer, accept=accept, **kwargs)

    # What `result_extended` would store of the call itself: the arguments, which can carry
    # personal data (names, emails in a dict payload). Task name, worker, queue, retries stay.
    PAYLOAD_FIELDS = ("args", "kwargs", "argsrepr", "kwargsrepr")

    def _get_result_meta(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        meta: dict[str, Any] = cast(Any, super())._get_result_meta(*args, **kwargs)
        for name in self.PAYLOAD_FIELDS:
            meta.pop(name, None)
        return meta

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Subscribe to a task's result when someone waits for it, not at every send.

        Celery's Redis backend subscribes to every task's result channel as it is sent (one
        SUBSCRIBE, later one UNSUBSCRIBE), though most producers never wait: a fan-out, the
        outbox relay and the web side send and move on. `.get()` still subscribes (through
        `add_pending_result`) and first reads a result already stored. With the transport
        option `subscribe_on_send` (module docstring) this is Celery's own again.
        """
        if self._subscribe_on_send:
            super().on_task_call(producer, task_id)

    @cached_property
    def _subscribe_on_send(self) -> bool:
        return bool(self._transport_options.get("subscribe_on_send", False))

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(STORE_UNLESS_SUCCEEDED)

    @cached_property
    def _store_and_count_script(self) -> Any:
        return self.client.register_script(batches.store_and_count(STORE_UNLESS_SUCCEEDED))

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        keys, args = [self.get_key_for_task(task_id)], [value, int(expires or 0)]
        owner, tag = self._settles(task_id, state, request)
        if tag is not None:
            keys.append(owner.inflight_key)
            args.append(tag)
        script, batch = self._store_script, self._batch_of(request, state)
        if batch is not None:  # a batch member's final state: counted in the same step
            script = self._store_and_count_script
            args += [*([] if tag is not None else [""]), batch, bytes_to_str(task_id)]
            args += ["s" if state == states.SUCCESS else "f", batches.BELL_PREFIX]
        try:
            self.ensure(script, (keys, args))
        except BaseException:
            if tag is not None:
                owner.took(tag, bytes_to_str(task_id))  # Celery's ack settles it instead
            raise
        return result

    def _settles(self, task_id: str, state: str, request: Any) -> tuple[Any, str | None]:
        """The owner and tag of the message whose SUCCESS this store is, to settle with it.

        The store then acknowledges the message too (one round trip instead of two), and no
        crash can fall between the two and run the task again. Only for a task this process
        runs (solo and threads pools; a prefork child's messages are its parent's), on the
        broker's own Redis, and not for a chord part, which must still count itself into its
        chord after the store.
        """
        if state != states.SUCCESS or request is None or getattr(request, "chord", None):
            return None, None
        owner = ownership.current_owner()
        if owner is None or not self._same_redis_as(owner):
            return None, None
        return owner, owner.hand_over(bytes_to_str(task_id))

    def _batch_of(self, request: Any, state: str) -> str | None:
        """The batch a final state (SUCCESS, FAILURE, REVOKED) counts into, or None.

        Batches live on the broker's Redis (their callbacks go onto its queues): with results
        on another Redis, `common.batches` refuses to create one, so no header names one here.
        """
        return batches.batch_of(request) if state in states.READY_STATES else None

    def _same_redis_as(self, owner: Any) -> bool:
        same = self._shares_broker
        if same is None:
            theirs = owner.client.connection_pool.connection_kwargs
            same = self._shares_broker = all(
                self.connparams.get(k) == theirs.get(k) for k in ("host", "port", "db", "path")
            )
        return same

    _shares_broker: bool | None = None


class SentinelBackend(RedisBackend, CelerySentinelBackend):
    """The same backend on the primary the sentinels name (`sentinel://`, master_name option)."""

    _shares_broker = False  # broker and results may name different sentinel groups


BACKEND = f"{__name__}:RedisBackend"
SENTINEL_BACKEND = f"{__name__}:SentinelBackend"

"""Unique jobs, the Celery side: the `x_unique` header on every publish, its release in the worker.

A contract declares `unique=Unique(on=(...), until=..., seconds=..., debounce=...)`
(`contracts.declare.Unique`). Here:

- `before_task_publish`, which every publish in a process passes (`delay`, `apply_async`,
  `send_many`, the outbox relay, beat, replay, canvas, a bare `send_task`), gives a unique
  task's message its header: the key (`TaskContract.unique_key`, a hash of the declared
  arguments), the lease in ms, whether it is a retry, whether it is debounced; a debounced
  message is also given an ETA `debounce` seconds away. The transport then takes the key in
  the same Lua step as the publish (`common.transport.broker.uniqueness`).
- `task_prerun` releases an `until="start"` key (a send while it runs queues one more), or
  renews an `until="finish"` key's lease from the start; `task_postrun` releases an
  `until="finish"` key when the task ends for good (a retry keeps it).
- A release deletes the key only if this task still holds it, so a run that outlived its
  lease never frees a key another task took since. A killed worker releases nothing: its key
  runs out with its lease.

`held_keys` lists what is held, for the operations page. Installed by `common.celery_config`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import signals, states

from common.transport.broker.uniqueness import (
    HEADER,
    KEY_PREFIX,
    MAX_LEASE_MS,
    Header,
    encode,
    header_of,
    pending_key,
)
from contracts.declare import TaskContract, UnknownTaskError, lookup

logger = logging.getLogger(__name__)

_CACHE_LIMIT = 1024  # task names remembered (declared unique or not)
_declared: dict[str, TaskContract | None] = {}

# KEYS[1] the unique key; KEYS[2] its pending key. ARGV[1] the task id; ARGV[2] 'release' or
# a lease in ms to renew. Only the holder may release or renew; returns 1 if it did.
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


def install() -> None:
    """Connect the publish header and the worker's release (idempotent)."""
    signals.before_task_publish.connect(on_publish, weak=False, dispatch_uid="jobs-unique-publish")
    signals.task_prerun.connect(on_start, weak=False, dispatch_uid="jobs-unique-start")
    signals.task_postrun.connect(on_end, weak=False, dispatch_uid="jobs-unique-end")


def contract_of(name: Any) -> TaskContract | None:
    """The contract of `name` if it declares `unique`, else None; remembered per name."""
    if not isinstance(name, str):
        return None
    if name in _declared:
        return _declared[name]
    try:
        found: TaskContract | None = lookup(name)
    except (UnknownTaskError, ImportError, ValueError):
        found = None
    if found is not None and found.unique is None:
        found = None
    if len(_declared) < _CACHE_LIMIT:
        _declared[name] = found
    return found


def unique_header(contract: TaskContract, args: Any, kwargs: Any, retries: int) -> list[Any] | None:
    """What `x_unique` says for this call of `contract` (None if its arguments do not bind)."""
    spec = contract.unique
    key = contract.unique_key(args, kwargs) if spec is not None else None
    if spec is None or key is None:
        return None
    lease = min(MAX_LEASE_MS, max(1, int(spec.seconds * 1000)))
    return encode(key, lease, spec.until, retry=retries > 0, debounce=bool(spec.debounce))


def on_publish(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    """`before_task_publish`: give a unique task's message its header (and a debounce ETA)."""
    if not isinstance(headers, dict):
        return
    contract = contract_of(sender if isinstance(sender, str) else headers.get("task"))
    if contract is None:
        headers.pop(HEADER, None)  # only a declaration makes a message unique
        return
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return  # not Celery's protocol 2: published plainly, judged by the worker's intake
    retries = headers.get("retries") or 0
    header = unique_header(contract, body[0], body[1], retries if isinstance(retries, int) else 1)
    if header is None:
        headers.pop(HEADER, None)
        return
    headers[HEADER] = header
    debounce = contract.unique.debounce if contract.unique is not None else 0
    if header[2].endswith("d") and not headers.get("eta"):
        headers["eta"] = (datetime.now(UTC) + timedelta(seconds=debounce)).isoformat()


def on_start(task_id: Any = None, task: Any = None, **_: Any) -> None:
    """`task_prerun`: release an until-start key; renew an until-finish key's lease from now."""
    header = _header(task)
    if header is None or not isinstance(task_id, str):
        return
    _settle(header, task_id, "release" if header.until == "start" else str(header.lease_ms))


def on_end(task_id: Any = None, task: Any = None, state: Any = None, **_: Any) -> None:
    """`task_postrun`: release an until-finish key when the task ended for good.

    A retry keeps it, and so does a task that ended otherwise (`Ignore`: a rate-limited task
    deferred to the delayed set runs again; `Reject`): its next run releases it, or its lease
    runs out."""
    header = _header(task)
    if header is None or not isinstance(task_id, str) or header.until != "finish":
        return
    if state not in (states.SUCCESS, states.FAILURE):
        return
    _settle(header, task_id, "release")


def _header(task: Any) -> Header | None:
    request = getattr(task, "request", None)
    header = getattr(request, HEADER, None) if request is not None else None
    if header is None:
        return None
    return header_of({"headers": {"id": "", HEADER: header}})


def _settle(header: Header, task_id: str, what: str) -> None:
    from common.transport.locks import redis_client

    key = header.key
    try:
        client = redis_client()
        client.register_script(RELEASE)(keys=[key, pending_key(key)], args=[task_id, what], client=client)
    except Exception as exc:  # noqa: BLE001 - Redis away: the lease frees the key; the task goes on
        logger.warning(
            "Could not %s unique key %s (%s); its lease frees it", _verb(what), key, type(exc).__name__
        )


def _verb(what: str) -> str:
    return "release" if what == "release" else "renew"


def held_keys(client: Any, limit: int = 100) -> list[dict[str, Any]]:
    """The held unique keys (at most `limit`): task name, key hash, holding task id, seconds left."""
    found: list[dict[str, Any]] = []
    for raw in client.scan_iter(match=KEY_PREFIX + "*", count=500):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        found.append({"key": key})
        if len(found) >= limit:
            break
    if not found:
        return []
    pipe = client.pipeline(transaction=False)
    for entry in found:
        pipe.get(entry["key"])
        pipe.pttl(entry["key"])
    replies = pipe.execute(raise_on_error=False)
    rows = []
    for entry, holder, ttl in zip(found, replies[::2], replies[1::2], strict=True):
        task, _, digest = entry["key"][len(KEY_PREFIX) :].rpartition(":")
        if not isinstance(holder, bytes | str):
            continue  # gone since the scan, or not ours
        rows.append(
            {
                "task": task,
                "hash": digest[:12],
                "holder": holder.decode() if isinstance(holder, bytes) else holder,
                "seconds_left": round(ttl / 1000, 1) if isinstance(ttl, int) and ttl >= 0 else None,
            }
        )
    return sorted(rows, key=lambda r: (r["task"], r["hash"]))

"""Replaying dead letters: check the stored message against today's contract, then send it again.

A dead letter keeps the raw message as the worker took it. Replay decodes it (Celery
protocol 2: a JSON envelope whose base64 body is `[args, kwargs, embed]`), checks the task
name and arguments against its contract as it is *now* (the fix may have been a deploy),
and republishes it with `common.calls.apply_async` under the original task id, so whoever
holds its AsyncResult sees the outcome: the result store lets SUCCESS replace the FAILURE
that dead-lettering stored. Only then is the entry removed. Anything that cannot be
replayed is refused with a reason a person can act on, and stays in the store.

Replay sends a message only back to the queue it came from, and only when that is the queue
its task's contract names: routing goes by the task's name, so a `payments.*` message
forged onto the `sync` queue (by whoever could write there) would otherwise become a real
charge on replay. A dead letter taken from another queue than its contract's is refused
(`check_queue`) and kept, for a person to look at and purge.

What the new message keeps: arguments, task id, canvas links from the embed (callbacks,
errbacks, the rest of a chain, chord membership), group id and index, root and parent id,
time limits, priority. What it drops: `eta` and `expires` (replay means run now; an
expired message would be discarded on receipt) and the retry count (it starts afresh).
A task that *failed* (reason "failed") already counted towards its chord as a failure,
so its replay leaves the chord; the outcome says so.

Replay publishes with `outbox=False`: a broker outage refuses the replay (entry kept,
try again) instead of parking the message in the outbox, whose relay drops a copy of a
task id that already has a final state, such as the FAILURE stored on dead-lettering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from common import calls
from common.masking import mask, mask_text
from common.settings import get_settings
from common.transport import protocol
from common.transport.dead_letter_store import FAILED, DeadLetter, DeadLetters
from common.transport.tls import redis_from_url
from contracts.declare import InvalidTaskArgumentsError, UnknownTaskError, lookup

# While one operator replays an entry, another's replay of it is refused (no double send).
CLAIM_PREFIX = "jobs.dead.replaying:"
CLAIM_SECONDS = 300


class Refused(Exception):
    """This dead letter cannot be replayed as it stands; the message says why."""


@dataclass(frozen=True)
class Message:
    """The parts of a stored protocol-2 message that a replay needs."""

    task: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    embed: dict[str, Any]
    headers: dict[str, Any]
    properties: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What happened to one dead letter: replayed (with its task id) or refused (with why)."""

    entry_id: str
    replayed: bool
    task: str | None = None
    task_id: str | None = None
    queue: str | None = None
    reason: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        if self.replayed:
            text = f"Replayed {self.entry_id} as {self.task}[{self.task_id}] on queue {self.queue}"
            return text + "".join(f"; {note}" for note in self.notes)
        return f"Refused {self.entry_id}: {self.reason}"


@contextmanager
def opened_store() -> Iterator[DeadLetters]:
    """The dead-letter store on the broker's Redis (REDIS_URL), with the configured cap and retention."""
    s = get_settings()
    client = redis_from_url(
        s.redis_url, socket_timeout=s.broker_socket_timeout, socket_connect_timeout=s.broker_socket_timeout
    )
    try:
        yield DeadLetters(client, cap=s.dead_letter_cap, retention=s.dead_letter_retention)
    finally:
        client.close()


def parse(raw: bytes) -> Message:
    """Decode a stored raw message; raise `Refused` naming what is wrong with it."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Refused(
            "undecodable: the stored message is not JSON (or not UTF-8); nothing to replay"
        ) from None
    if (
        not isinstance(envelope, dict)
        or not isinstance(envelope.get("headers"), dict)
        or "body" not in envelope
    ):
        raise Refused("undecodable: the stored message is not a Celery envelope (body, headers, properties)")
    headers: dict[str, Any] = envelope["headers"]
    properties = cast(
        "dict[str, Any]", envelope.get("properties") if isinstance(envelope.get("properties"), dict) else {}
    )
    task, task_id = headers.get("task"), headers.get("id")
    if not isinstance(task, str) or not isinstance(task_id, str):
        raise Refused("malformed: the headers lack a task name and id (not Celery protocol 2)")
    content_type = envelope.get("content-type")
    if content_type != "application/json":
        raise Refused(
            f"content type {content_type!r}: only application/json can be read safely; "
            "send the task anew from its producer"
        )
    try:
        args, kwargs, embed = protocol.task_call(envelope)
    except protocol.MalformedMessage as exc:
        raise Refused(f"malformed: {exc}") from None
    return Message(task, task_id, args, kwargs, embed, headers, properties)


def check(message: Message, raw_size: int, *, reason: str = "") -> tuple[dict[str, Any], list[str]]:
    """Check against today's contract and size limit; return the publish options and notes.

    Raises `Refused` for an unknown task (or canvas step), arguments that do not fit the
    contract, or a message larger than workers accept.
    """
    try:
        contract = lookup(message.task)
        contract.check(tuple(message.args), message.kwargs, tolerant=True)
    except UnknownTaskError as exc:
        raise Refused(f"unknown task: {exc}") from None
    except InvalidTaskArgumentsError as exc:
        raise Refused(f"the arguments do not fit today's contract: {exc}") from None
    limit = get_settings().task_max_payload_bytes
    if raw_size > limit:
        raise Refused(
            f"too large: the message is {raw_size:,} bytes and workers accept at most {limit:,} "
            "(TASK_MAX_PAYLOAD_BYTES); raise the limit on the workers and here, or send ids instead of data"
        )
    return _options(message, reason)


def check_queue(message: Message, queue: str) -> str:
    """The contract's queue for `message`, which must be the one it was dead-lettered from.

    Raises `Refused` for a message found on another queue than its task's contract names:
    no producer of ours sends it there, so replaying it would launder a forgery.
    """
    try:
        expected = lookup(message.task).queue
    except UnknownTaskError as exc:
        raise Refused(f"unknown task: {exc}") from None
    if queue != expected:
        raise Refused(
            f"wrong queue: {message.task} belongs on queue {expected!r} (its contract), but this "
            f"message was taken from queue {queue!r}; no producer sends it there, so it is not "
            "replayed (a forged message?). Look at it and purge it; send the task anew from its "
            "producer if it is wanted"
        )
    return expected


def _options(message: Message, reason: str) -> tuple[dict[str, Any], list[str]]:
    embed, headers = message.embed, message.headers
    options: dict[str, Any] = {"task_id": message.task_id}
    notes: list[str] = []
    links = {
        "link": embed.get("callbacks") or None,
        "link_error": embed.get("errbacks") or None,
        "chain": embed.get("chain") or None,
    }
    chord = embed.get("chord") or None
    if chord and reason == FAILED:
        notes.append("left its chord: the chord already counted this task's failure")
        chord = None
    for name, value in [*links.items(), ("chord", chord)]:
        if value is None:
            continue
        for step in value if isinstance(value, list) else [value]:
            step_task = step.get("task") if isinstance(step, dict) else None
            # Celery's own canvas tasks (celery.group, celery.chord, ...) exist on every worker.
            known = isinstance(step_task, str) and (_declared(step_task) or step_task.startswith("celery."))
            if not known:
                raise Refused(
                    f"its canvas ({name}) names {step_task!r}, which no service exposes today; "
                    "send the workflow anew from its producer"
                )
        options[name] = value
    if chord or headers.get("group"):
        options["group_id"] = headers.get("group")
        options["group_index"] = headers.get("group_index")
    for key in ("root_id", "parent_id", "shadow"):
        if isinstance(headers.get(key), str):
            options[key] = headers[key]
    limits = headers.get("timelimit")
    if isinstance(limits, list) and len(limits) == 2:
        hard, soft = limits
        if isinstance(hard, int | float) and not isinstance(hard, bool):
            options["time_limit"] = hard
        if isinstance(soft, int | float) and not isinstance(soft, bool):
            options["soft_time_limit"] = soft
    priority = message.properties.get("priority")
    if isinstance(priority, int) and not isinstance(priority, bool):
        options["priority"] = priority
    if headers.get("ignore_result") is True:
        options["ignore_result"] = True
    return options, notes


def replay_entry(store: DeadLetters, entry: DeadLetter) -> Outcome:
    """Replay one stored dead letter (see the module docstring); never raises for a bad entry."""
    try:
        message = parse(entry.raw_bytes)
        options, notes = check(message, len(entry.raw_bytes), reason=entry.reason)
        queue = check_queue(message, entry.queue)
    except Refused as exc:
        return Outcome(entry.id, False, task=entry.task, task_id=entry.task_id, reason=str(exc))
    claim = CLAIM_PREFIX + entry.id
    if not store.client.set(claim, 1, nx=True, ex=CLAIM_SECONDS):
        busy = "another replay of this entry is under way; look again in a moment"
        return Outcome(entry.id, False, task=message.task, task_id=message.task_id, reason=busy)
    try:
        try:
            calls.apply_async(message.task, message.args, message.kwargs, outbox=False, **options)
        except InvalidTaskArgumentsError as exc:  # e.g. the producer-side payload limit
            return Outcome(entry.id, False, task=message.task, task_id=message.task_id, reason=str(exc))
        except calls.BrokerUnavailableError as exc:
            why = f"{exc} The dead letter is kept; replay it when the broker is back."
            return Outcome(entry.id, False, task=message.task, task_id=message.task_id, reason=why)
        store.remove(entry.id)
    finally:
        store.client.delete(claim)
    return Outcome(
        entry.id,
        True,
        task=message.task,
        task_id=message.task_id,
        queue=queue,
        notes=tuple(notes),
    )


def replay(store: DeadLetters, entry_id: str) -> Outcome:
    """Replay the dead letter with this id; an unknown id is a refusal saying so."""
    entry = store.get(entry_id)
    if entry is None:
        return Outcome(entry_id, False, reason=no_such_entry(entry_id))
    return replay_entry(store, entry)


def replay_many(
    store: DeadLetters,
    queue: str | None = None,
    *,
    task: str | None = None,
    reason: str | None = None,
    limit: int | None = None,
) -> list[Outcome]:
    """Replay every dead letter matching the filters (newest first), each on its own."""
    return [replay_entry(store, entry) for entry in store.list(queue, task=task, reason=reason, limit=limit)]


def no_such_entry(entry_id: str) -> str:
    return (
        f"no dead letter with id {entry_id!r}: it was replayed or purged, or dropped by the "
        "retention or the per-queue cap"
    )


def readable(entry: DeadLetter) -> Any:
    """The stored message for a person to read: JSON with the body decoded, personal data masked.

    Falls back to the raw text (masked) when it is not JSON, so an operator still sees it.
    """
    try:
        envelope = json.loads(entry.raw_bytes)
    except (ValueError, UnicodeDecodeError):
        text = (
            entry.raw if entry.raw_encoding == "utf-8" else f"(base64 of bytes that are not text) {entry.raw}"
        )
        return mask_text(text[:20_000])
    if isinstance(envelope, dict) and "body" in envelope:
        try:
            body = protocol.decode_body(envelope)
        except protocol.MalformedMessage as exc:
            body = f"(malformed: {exc})"
        envelope = {**envelope, "body": body}
        if isinstance(body, list) and len(body) == 3:
            envelope["body"] = {"args": body[0], "kwargs": body[1], "embed": body[2]}
    return mask(envelope)


def _declared(task: str) -> bool:
    try:
        lookup(task)
    except UnknownTaskError:
        return False
    return True

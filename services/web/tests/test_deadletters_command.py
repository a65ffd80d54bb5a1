"""`manage.py deadletters`: what an operator reads and what replay does, on real Redis and a real worker."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import pytest
from celery import states
from celery.result import AsyncResult
from django.core.management import call_command
from django.core.management.base import CommandError

from common import calls
from common.celery_app import current_app
from common.deadletters import DeadLetter, DeadLetters, replay
from common.transport.dead_letter_store import FAILED, INVALID_ARGUMENTS, UNKNOWN_TASK
from devtools.processes import child_env
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers
from web.tests.deadletters_testing import a_queue, dead, envelope, real_message, stored_result


def run(*argv: str) -> tuple[int, str]:
    """The command as an operator runs it: (exit code, everything it printed)."""
    out = io.StringIO()
    try:
        call_command("deadletters", *argv, stdout=out, stderr=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + f"CommandError: {exc}\n"
    return 0, out.getvalue()


def test_list_shows_a_table_and_counts_per_queue(store: DeadLetters) -> None:
    queue = a_queue()
    first = dead(store, queue, FAILED, b"{}", None, detail="ConnectionError for jane.doe@example.com")
    second = dead(store, queue, UNKNOWN_TASK, b"{}", None)

    code, out = run("list", "--queue", queue)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "(UTC)", "QUEUE", "TASK", "REASON", "DETAIL"]
    assert lines[1].startswith(second.id) and lines[2].startswith(first.id), "newest first"
    assert "ConnectionError for [email]" in lines[2] and "jane.doe" not in out
    assert f"Stored per queue: {queue} 2" in out

    code, out = run("list", "--queue", queue, "--reason", FAILED)
    assert first.id in out and second.id not in out
    code, out = run("list", "--queue", queue, "--limit", "1")
    assert second.id in out and first.id not in out
    code, out = run("list", "--reason", "no-such-reason")
    assert code != 0 and "invalid choice" in out


def test_show_decodes_the_message_and_masks_personal_data(store: DeadLetters) -> None:
    task_id, raw = envelope([["ann@example.com"], {"email": "ann@example.com", "doctor_id": 7}, {}])
    entry = dead(store, a_queue(), INVALID_ARGUMENTS, raw, task_id)

    code, out = run("show", entry.id)
    assert code == 0, out
    assert f"task id:  {task_id}" in out and "reason:   invalid-arguments" in out
    shown = json.loads(out.split("masked):\n", 1)[1])
    assert shown["body"] == {
        "args": ["[email]"],
        "kwargs": {"email": "[redacted]", "doctor_id": 7},
        "embed": {},
    }
    assert "ann@example.com" not in out

    code, out = run("show", "sync/does-not-exist")
    assert code == 1 and "No dead letter with id 'sync/does-not-exist'" in out


def test_purge_wants_a_selection_and_yes(store: DeadLetters) -> None:
    queue = a_queue()
    ids = [dead(store, queue, FAILED, b"{}", None).id for _ in range(3)]

    code, out = run("purge")
    assert code == 1 and "Say which dead letters to purge" in out
    code, out = run("purge", "--queue", queue)
    assert code == 1 and "would delete 3 dead letter(s)" in out and "--yes" in out
    assert store.count(queue) == 3, "nothing may go without --yes"

    code, out = run("purge", ids[0], "--yes")
    assert code == 0 and "Removed 1 dead letter(s)." in out
    code, out = run("purge", "--queue", queue, "--yes")
    assert code == 0 and "Removed 2 dead letter(s)." in out and store.count(queue) == 0
    code, out = run("purge", ids[0], "--yes")
    assert code == 1 and "Not found" in out and ids[0] in out


def test_replay_refuses_what_today_s_contract_or_limit_would_refuse(
    sync_worker: Workers, store: DeadLetters
) -> None:
    # Dead-lettered by the real worker: a producer that bypassed the contract check.
    bad_id = current_app().send_task("sync.echo", args=["not-an-int"]).id
    found: list[DeadLetter] = []

    def dead_lettered() -> list[DeadLetter]:
        found.extend(e for e in store.list("sync", limit=None) if e.task_id == bad_id)
        return found

    wait_until(dead_lettered)
    invalid = found[0]
    assert invalid.reason == INVALID_ARGUMENTS
    queue = a_queue()
    pickle_id, pickle_raw = envelope([[1], {}, {}], content_type="application/x-python-serialize")
    gone_id, gone_raw = envelope([[1], {}, {}], task="sync.no_longer_exists")
    big_id, big_raw = envelope([[1], {}, {"pad": "x" * 1_100_000}])
    forged_id, forged_raw = envelope([[1], {}, {}], task="payments.process_payment")
    cases = {
        dead(
            store, queue, "undecodable", b"\x80\x04garbage", None
        ).id: "undecodable: the stored message is not JSON",
        dead(
            store, queue, "content-type", pickle_raw, pickle_id
        ).id: "content type 'application/x-python-serialize'",
        dead(
            store, queue, UNKNOWN_TASK, gone_raw, gone_id
        ).id: "unknown task: No service exposes a task named",
        dead(store, queue, "too-large", big_raw, big_id).id: "too large: the message is 1,4",
        invalid.id: "the arguments do not fit today's contract: sync.echo(value: int): argument 'value'",
        dead(
            store, "sync", UNKNOWN_TASK, forged_raw, forged_id, task="payments.process_payment"
        ).id: "wrong queue: payments.process_payment belongs on queue 'payments' (its contract), "
        "but this message was taken from queue 'sync'",
    }
    code, out = run("replay", *cases, "sync/not-there")
    assert code == 1, out
    for entry_id, why in cases.items():
        line = next(line for line in out.splitlines() if entry_id in line)
        assert line.startswith(f"Refused {entry_id}: {why}"), line
        assert store.get(entry_id) is not None, "a refused dead letter must stay"
    assert "Refused sync/not-there: no dead letter with id 'sync/not-there'" in out
    assert "Replayed 0, refused 7." in out and "7 dead letter(s) refused" in out
    assert stored_result(bad_id)["status"] == states.FAILURE


def test_replay_runs_under_the_original_task_id_and_keeps_its_callback(
    sync_worker: Workers, store: DeadLetters
) -> None:
    queue = "sync"  # its contract's queue: replay sends nothing taken from another
    callback_id = str(uuid.uuid4())
    failed_id, failed_raw = real_message(
        "sync.echo", [5], link=calls.signature("sync.echo", (), task_id=callback_id)
    )
    # Dead-lettered before the deploy that added the task: fixable today.
    unknown_id, unknown_raw = real_message("sync.echo", [6])
    failed = dead(store, queue, FAILED, failed_raw, failed_id)
    unknown = dead(store, queue, UNKNOWN_TASK, unknown_raw, unknown_id)
    assert stored_result(failed_id)["status"] == states.FAILURE

    code, out = run("replay", failed.id)
    assert code == 0, out
    assert (
        f"Replayed {failed.id} as sync.echo[{failed_id}] on queue sync" in out
        and "Replayed 1, refused 0." in out
    )
    wait_until(lambda: stored_result(failed_id)["status"] == states.SUCCESS, timeout=30)
    assert stored_result(failed_id)["result"] == 5
    assert AsyncResult(callback_id, app=current_app()).get(timeout=30) == 5, "the callback link was lost"
    assert store.get(failed.id) is None, "a replayed dead letter must leave the store"

    # By filter: the newest matching entry (the session shares the store, and its sync queue).
    code, out = run("replay", "--queue", queue, "--reason", UNKNOWN_TASK, "--limit", "1")
    assert code == 0 and f"Replayed {unknown.id} as sync.echo[{unknown_id}]" in out
    wait_until(lambda: stored_result(unknown_id)["status"] == states.SUCCESS, timeout=30)
    assert stored_result(unknown_id)["result"] == 6
    assert store.get(unknown.id) is None

    code, out = run("replay")
    assert code == 1 and "Say which dead letters to replay" in out


def test_an_entry_being_replayed_is_not_sent_twice(store: DeadLetters) -> None:
    """Two operators replaying the same entry at once: the second is refused, nothing is sent."""
    task_id, raw = envelope([[1], {}, {}])
    entry = dead(store, "sync", FAILED, raw, task_id)  # replayable: its contract's queue
    claim = replay.CLAIM_PREFIX + entry.id
    store.client.set(claim, 1, ex=60)  # the first operator's replay, under way
    try:
        code, out = run("replay", entry.id)
    finally:
        store.client.delete(claim)
    assert code == 1 and f"Refused {entry.id}: another replay of this entry is under way" in out
    assert store.get(entry.id) is not None and stored_result(task_id)["status"] == states.FAILURE


def test_exit_code_of_the_real_entry_point(store: DeadLetters) -> None:
    """`web.pex deadletters` exits non-zero on a refusal, so a script or CI step notices."""
    entry = dead(store, a_queue(), "undecodable", b"not json", None)
    refused = subprocess.run(
        [sys.executable, "-m", "web.manage", "deadletters", "replay", entry.id, "nope/nope"],
        env=child_env({"DJANGO_SETTINGS_MODULE": "web.settings"}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert refused.returncode == 1, refused.stderr
    assert f"Refused {entry.id}: undecodable" in refused.stdout
    assert "Refused nope/nope: no dead letter with id 'nope/nope'" in refused.stdout
    assert "CommandError: 2 dead letter(s) refused" in refused.stderr


def test_replay_keeps_the_canvas_and_a_failed_task_leaves_its_chord() -> None:
    """What the republished message carries over from the stored one (no worker needed to see it)."""
    links = {
        "link": calls.signature("sync.echo", ()),
        "link_error": calls.signature("emails.notify_admin", (1,), immutable=True),
        "chord": calls.signature("emails.notify_admin", ()),
    }
    task_id, raw = real_message("sync.echo", [1], group_id="group-1", group_index=2, priority=3, **links)
    message = replay.parse(raw)

    options, notes = replay.check(message, len(raw), reason=UNKNOWN_TASK)
    assert options["task_id"] == task_id and options["priority"] == 3 and notes == []
    assert [s["task"] for s in options["link"]] == ["sync.echo"]
    assert [s["task"] for s in options["link_error"]] == ["emails.notify_admin"]
    assert options["chord"]["task"] == "emails.notify_admin"
    assert (options["group_id"], options["group_index"]) == ("group-1", 2)

    # A task that failed already counted towards its chord: replaying it there would count twice.
    options, notes = replay.check(message, len(raw), reason=FAILED)
    assert "chord" not in options
    assert notes == ["left its chord: the chord already counted this task's failure"]

    retired = calls.signature("sync.echo", ())
    retired["task"] = "sync.retired"  # a callback whose task was removed since
    _, raw = real_message("sync.echo", [1], link=retired)
    with pytest.raises(replay.Refused, match="its canvas \\(link\\) names 'sync.retired'"):
        replay.check(replay.parse(raw), len(raw))

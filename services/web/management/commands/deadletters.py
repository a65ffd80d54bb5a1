"""`manage.py deadletters list|show|replay|purge`: operate the dead-letter store from a shell or CI.

Replay checks each message against today's contract first (`common.deadletters.replay`)
and exits non-zero if any was refused, so a script notices. Purge never prompts (CI has
no stdin): it wants a filter, ids or `--all`, and `--yes`.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.deadletters import REASONS, DeadLetter, DeadLetters
from common.deadletters.replay import Outcome, no_such_entry, opened_store, readable, replay, replay_many
from common.masking import mask_text, redact_url


def when(entry: DeadLetter) -> str:
    return datetime.fromtimestamp(entry.time, UTC).strftime("%Y-%m-%d %H:%M:%S")


def short(text: str, width: int = 60) -> str:
    text = mask_text(" ".join(text.split()))
    return text if len(text) <= width else text[: width - 1] + "…"


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


class Command(BaseCommand):
    help = "List, show, replay or purge dead letters (messages workers could not run)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="list|show|replay|purge")

        def filters(p: Any, limit: int | None) -> None:
            p.add_argument("--queue", help="only this queue")
            p.add_argument("--task", help="only this task name, e.g. sync.echo")
            p.add_argument("--reason", choices=REASONS, help="only this reason")
            p.add_argument("--limit", type=int, default=limit, help="at most this many, newest first")

        filters(sub.add_parser("list", help="entries, newest first, and counts per queue"), 50)
        show = sub.add_parser("show", help="one entry with its message decoded")
        show.add_argument("entry_id", metavar="ID")
        replay_p = sub.add_parser("replay", help="check against today's contract, then send again")
        replay_p.add_argument("ids", nargs="*", metavar="ID")
        filters(replay_p, None)
        replay_p.add_argument(
            "--all", action="store_true", help="every entry (when no filter or id is given)"
        )
        purge = sub.add_parser("purge", help="delete entries for good")
        purge.add_argument("ids", nargs="*", metavar="ID")
        filters(purge, None)
        purge.add_argument("--all", action="store_true", help="every entry (when no filter or id is given)")
        purge.add_argument("--yes", action="store_true", help="really delete (there is no prompt)")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            with opened_store() as store:
                getattr(self, f"do_{action}")(store, **options)
        except redis.RedisError as exc:
            from common.settings import get_settings

            raise CommandError(
                f"Could not reach the dead-letter store at {redact_url(get_settings().redis_url)} "
                f"({type(exc).__name__}). Is Redis running and REDIS_URL right?"
            ) from exc

    # --- actions -----------------------------------------------------------------------------
    def do_list(self, store: DeadLetters, **options: Any) -> None:
        entries = store.list(
            options["queue"], task=options["task"], reason=options["reason"], limit=options["limit"]
        )
        rows = [("ID", "TIME (UTC)", "QUEUE", "TASK", "REASON", "DETAIL")]
        rows += [(e.id, when(e), e.queue, e.task or "-", e.reason, short(e.detail)) for e in entries]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[5]
            )
        if not entries:
            self.stdout.write("(no dead letters match)")
        self.stdout.write("")
        queues = [options["queue"]] if options["queue"] else store.queues()
        counts = {q: store.count(q) for q in queues}
        self.stdout.write("Stored per queue: " + (", ".join(f"{q} {n}" for q, n in counts.items()) or "none"))

    def do_show(self, store: DeadLetters, *, entry_id: str, **options: Any) -> None:
        entry = store.get(entry_id)
        if entry is None:
            raise CommandError(
                sentence(no_such_entry(entry_id)) + " `deadletters list` shows the ids there are."
            )
        for label, value in [
            ("id", entry.id),
            ("time", when(entry) + " UTC"),
            ("queue", entry.queue),
            ("task", entry.task or "-"),
            ("task id", entry.task_id or "-"),
            ("reason", entry.reason),
            ("detail", mask_text(entry.detail)),
            ("worker", entry.worker or "-"),
            ("size", f"{len(entry.raw_bytes):,} bytes"),
        ]:
            self.stdout.write(f"{label + ':':<9} {value}")
        message = readable(entry)
        self.stdout.write("message (body decoded, personal data masked):")
        self.stdout.write(
            message if isinstance(message, str) else json.dumps(message, indent=2, ensure_ascii=False)
        )

    def do_replay(self, store: DeadLetters, *, ids: list[str], **options: Any) -> None:
        if ids:
            outcomes = [replay(store, i) for i in ids]
        else:
            self._need_selection("replay", options)
            outcomes = replay_many(
                store,
                options["queue"],
                task=options["task"],
                reason=options["reason"],
                limit=options["limit"],
            )
        self._report(outcomes)

    def do_purge(self, store: DeadLetters, *, ids: list[str], **options: Any) -> None:
        if ids:
            matching = [i for i in ids if store.get(i) is not None]
            missing = sorted(set(ids) - set(matching))
        else:
            self._need_selection("purge", options)
            entries = store.list(
                options["queue"], task=options["task"], reason=options["reason"], limit=options["limit"]
            )
            matching, missing = [e.id for e in entries], []
        if not options["yes"]:
            raise CommandError(
                f"This would delete {len(matching)} dead letter(s) for good. Add --yes to do it "
                "(there is no prompt); `deadletters list` with the same filters shows them."
            )
        removed = sum(store.remove(i) for i in matching)
        self.stdout.write(f"Removed {removed} dead letter(s).")
        if missing:
            raise CommandError("Not found (already gone?): " + ", ".join(missing))

    # --- helpers -----------------------------------------------------------------------------
    def _need_selection(self, verb: str, options: dict[str, Any]) -> None:
        if not (options["queue"] or options["task"] or options["reason"] or options["all"]):
            raise CommandError(
                f"Say which dead letters to {verb}: ids, or --queue/--task/--reason, or --all for every one."
            )

    def _report(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.stdout.write(mask_text(str(outcome)))
        tally = Counter(o.replayed for o in outcomes)
        self.stdout.write(f"Replayed {tally[True]}, refused {tally[False]}.")
        if tally[False]:
            raise CommandError(
                f"{tally[False]} dead letter(s) refused (reasons above); they stay in the store. "
                "Fix the cause and replay again, or purge them."
            )
        if not outcomes:
            self.stdout.write("(no dead letters match)")

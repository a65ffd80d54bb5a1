"""`manage.py relay_outbox`: publish the tasks the outbox keeps, oldest first, until stopped."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from common.outbox import relay


class Command(BaseCommand):
    help = (
        "Publish tasks kept in the outbox (sent while the broker was down, or committed and not "
        "yet published), oldest first, every --interval seconds. Several relays may run."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--once", action="store_true", help="one pass, then exit (1 if the broker is down)"
        )
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between passes (default 1)")
        parser.add_argument("--batch-size", type=int, default=relay.BATCH_SIZE, help="rows per transaction")

    def handle(self, *args: Any, once: bool, interval: float, batch_size: int, **options: Any) -> None:
        if interval <= 0 or batch_size <= 0:
            raise CommandError("--interval and --batch-size must be positive")
        if not once:
            relay.run(interval=interval, batch_size=batch_size)
            return
        done = relay.relay_once(batch_size=batch_size)
        self.stdout.write(f"published {done.published} task(s), {done.failed} failed")
        if done.broker_down:
            raise CommandError(f"stopped: {done.broker_down}; the rest stays in the outbox")

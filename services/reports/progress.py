"""Time-throttled PROGRESS updates: a poller sees movement, a large report pays ~nothing."""

from __future__ import annotations

import time
from collections.abc import Callable

from celery import Task


class Progress:
    def __init__(
        self,
        task: Task,
        total: int,
        *,
        every: float = 0.5,
        on_publish: Callable[[int, int], None] | None = None,
    ) -> None:
        self.task = task
        self.total = total
        self.every = every
        self.on_publish = on_publish
        self._next = 0.0

    def update(self, current: int) -> None:
        now = time.monotonic()
        if now < self._next and current < self.total:
            return
        self._next = now + self.every
        self.publish(current)

    def publish(self, current: int) -> None:
        if self.task.request.id is not None:  # no result to update when called inline
            self.task.update_state(state="PROGRESS", meta={"current": current, "total": self.total})
        if self.on_publish is not None:
            self.on_publish(current, self.total)

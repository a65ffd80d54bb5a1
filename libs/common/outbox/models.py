"""One row per task the broker does not have yet."""

from __future__ import annotations

from django.db import models


class OutboxMessage(models.Model):
    """A task waiting to be published, with everything needed to publish it unchanged.

    The task id is fixed when the task is sent, so a row published twice (a relay that
    crashed before deleting it) reaches the workers as the same task.
    """

    task_id = models.CharField(max_length=255, unique=True)
    task_name = models.CharField(max_length=255)
    queue = models.CharField(max_length=255)
    # As kombu encodes them: datetimes, decimals and UUIDs keep their type tags.
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    options = models.JSONField(
        default=dict, help_text="JSON-safe publish options; countdown is stored as an absolute eta"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0, help_text="failed publish attempts")
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "outbox message"

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}]"

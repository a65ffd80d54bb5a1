"""Permissions of the admin's pages without a model of their own (no tables).

Dead letters live in Redis (`common.deadletters`), and charging an appointment is an action,
not a row, yet both need permissions a superuser can grant in the admin's user and group
pages like any other: an unmanaged model with `default_permissions = ()` carries exactly the
ones declared here (Django creates them after `migrate`, bound to the model's content type),
and no table is ever created or queried.

- `web.view_deadletter`: the dead-letter list and each entry (personal data masked).
- `web.replay_deadletter`: send dead letters again (a replayed payment is a real charge).
- `web.purge_deadletter`: delete dead letters for good.
- `web.charge_appointment`: the appointments' "Charge now / retry payment" action, a new
  attempt at the payment gateway.
- `web.pause_queue`: pause and resume a queue on the operations page (no worker starts its
  tasks while it is paused: `common.transport.broker.pause`).
"""

from __future__ import annotations

from django.db import models

VIEW_DEADLETTER = "web.view_deadletter"
REPLAY_DEADLETTER = "web.replay_deadletter"
PURGE_DEADLETTER = "web.purge_deadletter"
CHARGE_APPOINTMENT = "web.charge_appointment"
PAUSE_QUEUE = "web.pause_queue"


class DeadLetter(models.Model):
    """The dead-letter store's permissions; the entries themselves are in Redis."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_deadletter", "Can view dead letters (messages workers could not run)"),
            ("replay_deadletter", "Can replay dead letters (send them to their workers again)"),
            ("purge_deadletter", "Can purge dead letters (delete them for good)"),
        ]


class AppointmentCharge(models.Model):
    """Charging an appointment from the admin: a request for money, its own permission."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("charge_appointment", "Can charge an appointment now (a new payment gateway attempt)"),
        ]


class QueuePause(models.Model):
    """Pausing a queue from the admin: it stops work on every worker, its own permission."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("pause_queue", "Can pause and resume a queue (no worker starts its tasks while paused)"),
        ]

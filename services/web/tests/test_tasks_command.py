"""`manage.py tasks revoke|revoked` and the operations page's revoked tasks, on real Redis.

What the revoke does to a task on its way through a worker is measured with real workers in
tests/faults/test_revoke.py; here, what an operator types and reads.
"""

from __future__ import annotations

import io
import subprocess
import sys
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from common import cancellation
from common.transport import revocation
from devtools.processes import child_env

pytestmark = pytest.mark.usefixtures("django_test_environment")


def run(*argv: str) -> tuple[int, str]:
    """The command as an operator runs it: (exit code, everything it printed)."""
    out = io.StringIO()
    try:
        call_command("tasks", *argv, stdout=out, stderr=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + f"CommandError: {exc}\n"
    return 0, out.getvalue()


def test_revoke_records_each_id_and_revoked_lists_them_newest_first() -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    code, out = run("revoke", first)
    assert code == 0 and out == f"revoked {first}\n"
    code, out = run("revoke", second, second)  # a repeated id is one revoke
    assert code == 0 and out == f"revoked {second}\n"
    assert cancellation.is_revoked(first) and cancellation.is_revoked(second)

    code, out = run("revoked", "--limit", "2")
    lines = out.splitlines()
    assert lines[0].split() == ["TASK", "ID", "REVOKED", "AT", "(UTC)", "STATE", "HARD", "STOP"]
    assert [line.split()[0] for line in lines[1:]] == [second, first]
    assert all(line.split()[3] == "PENDING" for line in lines[1:])  # no worker has seen them yet


def test_a_string_no_task_id_is_refused_and_nothing_is_revoked() -> None:
    good = str(uuid.uuid4())
    code, out = run("revoke", good, "not an id")
    assert code != 0 and "not a task id: 'not an id'; nothing was revoked" in out
    assert not cancellation.is_revoked(good)


def test_terminate_with_no_worker_running_still_records_the_revoke() -> None:
    task_id = str(uuid.uuid4())
    code, out = run("revoke", task_id, "--terminate")
    assert code == 0, out
    assert "hard stop sent (SIGTERM); 0 worker(s) answered, 0 refused" in out
    assert cancellation.is_revoked(task_id)
    assert next(r for r in cancellation.recent() if r.task_id == task_id).terminate


def test_the_command_runs_as_deployed() -> None:
    task_id = str(uuid.uuid4())
    done = subprocess.run(
        [sys.executable, "-m", "web.manage", "tasks", "revoke", task_id],
        env=child_env({"DJANGO_SETTINGS_MODULE": "web.settings"}),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"revoked {task_id}\n"
    assert cancellation.is_revoked(task_id)


def test_the_operations_page_lists_revoked_tasks_with_their_state(redis_client) -> None:
    task_id = str(uuid.uuid4())
    cancellation.revoke([task_id])
    assert redis_client.ttl(revocation.KEY_PREFIX + task_id) >= cancellation.retention() - 5
    user = get_user_model().objects.create_user(f"op-{uuid.uuid4().hex[:8]}", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    page = client.get("/admin/operations/").content.decode()
    assert 'id="operations-revoked"' in page
    row = page.split(f'data-task-id="{task_id}"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="state">PENDING</td>' in row

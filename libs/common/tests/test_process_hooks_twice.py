"""A worker run's hooks installed twice, JSON logs and metrics on, start nothing twice (platform
tier: the metrics hook serves HTTP, and the JSON logs hook changes the process's logging, so
they run in a child process of their own; the fast tier checks the rest of the list)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devtools.ports import free_port
from devtools.processes import child_env

CHILD = """
import json, logging, urllib.request
from celery import signals
from celery.utils.dispatch import Signal
from common.celery_app import create_app
from common.observability import metrics
from common.observability.logging_config import JsonLogFormatter
from common.process_hooks import HOOKS, Scope, install
from common.settings import get_settings
from common.transport.dead_letter_store import dead_lettered

def receivers():
    found = [v for v in vars(signals).values() if isinstance(v, Signal)] + [dead_lettered]
    return {str(s.name): [str(key) for key, _ in s.receivers] for s in found}

def json_handlers():
    return sum(isinstance(h.formatter, JsonLogFormatter) for h in logging.getLogger().handlers)

app = create_app("sync")
app.conf.worker_pool = "threads"
install(app, Scope.WORKER_RUN)
first, server, handlers = receivers(), metrics._serving, json_handlers()
for hook in HOOKS:
    hook.install(app)
s = get_settings()
body = urllib.request.urlopen(f"http://{s.metrics_address}:{s.metrics_port}/metrics", timeout=10).read()
print(json.dumps({
    "first": first, "again": receivers(), "same_server": server is not None and metrics._serving is server,
    "json_handlers": [handlers, json_handlers()], "worker_info": b"celery_worker_info{" in body,
}))
"""


def test_a_worker_run_s_hooks_twice_serve_metrics_once_and_connect_each_receiver_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = child_env({"LOG_FORMAT": "json", "METRICS_PORT": str(port), "DATA_DIR": str(tmp_path)})
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]  # a second server on the port: OSError
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    counts = {name: len(keys) for name, keys in shown["again"].items() if keys}
    print(f"\nmetrics on :{port}, receivers after the second install: {counts}")
    assert shown["again"] == shown["first"]
    assert shown["same_server"] and shown["worker_info"]
    assert counts["task_success"] == 1  # metrics' own receiver, once
    first_json, again_json = shown["json_handlers"]
    assert first_json >= 1 and again_json == first_json

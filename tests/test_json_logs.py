"""LOG_FORMAT=json: a real worker writes nothing but JSON lines, task lines carry the task's ids.

A worker like the services' (common.worker.run_worker, the platform's logging) runs a chain
of two tasks whose second step fails with a doctor's email in its message, on both pools
(prefork: the lines of the pool's children). Its whole log, start-up to shutdown, parses as
JSON; the task lines say which task and which workflow; the email is masked as in text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest

from common.celery_app import current_app
from devtools.processes import ServiceProcess

EMAIL = "dr.jsonlogs@clinic.example"

WORKER = f"""
import logging
import sys
from common.celery_app import create_app
from common.worker import run_worker

app = create_app("jsonprobe")
logger = logging.getLogger("jsonprobe.tasks")


@app.task(name="jsonprobe.lookup")
def lookup(doctor_id):
    logger.info("looking up doctor %s", doctor_id)
    return {{"doctor_id": doctor_id, "contact": {EMAIL!r}}}


@app.task(name="jsonprobe.create")
def create(found):
    logger.warning("creating the account of %s", found["contact"])
    print("a print inside a task")
    raise LookupError("the CRM has no account for\\n" + found["contact"])


run_worker(app, pool=sys.argv[1], concurrency=2, argv=["--without-mingle", "--without-gossip"])
"""


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_logs_json_lines_with_task_ids_and_masked_emails(pool: str, data_dir: Path) -> None:
    log = data_dir / f"json-{pool}-worker.log"
    log.unlink(missing_ok=True)
    proc = ServiceProcess(
        f"json-{pool}", "jsonprobe", env={"LOG_LEVEL": "INFO", "LOG_FORMAT": "json"}, log=log
    )
    proc.argv = [sys.executable, "-c", WORKER, pool]
    proc.start()
    app = current_app()
    try:
        deadline = time.monotonic() + 60
        while not any(n.startswith("jsonprobe@") for r in app.control.ping(timeout=0.5) or [] for n in r):
            assert proc.running and time.monotonic() < deadline, log.read_text()[-3000:]
        flow = app.signature("jsonprobe.lookup", args=(7,), queue="jsonprobe") | app.signature(
            "jsonprobe.create", queue="jsonprobe"
        )
        second = flow.apply_async()
        second.get(timeout=30, propagate=False)
        assert second.state == "FAILURE"
        first_id, second_id = second.parent.id, second.id
        time.sleep(0.5)  # the failure lines are written after the result is stored
    finally:
        assert proc.stop() == 0
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n{text[-3000:]}")
    for record in records:
        assert {"timestamp", "level", "logger", "message", "service"} <= record.keys(), record
    # From run_worker on (`python -m <service>.worker` names it from the start; `-c` cannot).
    assert all(r["service"] == "jsonprobe" for r in records if r["logger"].startswith("celery"))

    def of(task_id: str) -> list[dict]:
        return [r for r in records if r.get("task_id") == task_id]

    first, second_lines = of(first_id), of(second_id)
    assert any(r["message"] == "looking up doctor 7" for r in first), first
    assert any("received" in r["message"] for r in first)  # Celery's line, in the main process
    ran = [r for r in second_lines if r.get("root_id")]
    assert ran and all(r["root_id"] == first_id and r["parent_id"] == first_id for r in ran), second_lines
    assert all(r["task_name"] == "jsonprobe.create" and r["retries"] == 0 for r in ran)
    assert {r["logger"] for r in ran} >= {"jsonprobe.tasks", "celery.app.trace", "common.task_failure"}
    assert any(r["message"] == "creating the account of [email]" for r in ran)
    assert any(r["message"] == "a print inside a task" for r in ran)  # stdout, redirected to logging
    failure = next(r for r in ran if r["logger"] == "celery.app.trace" and r["level"] == "ERROR")
    assert "the CRM has no account for\n[email]" in failure["exc_info"]
    assert EMAIL not in text and "jsonlogs@" not in text
    assert "data" not in failure  # Celery's context, with the task's arguments: not printed
    assert any("shutdown" in r["message"] for r in records)  # Celery's own notice, as JSON too


def test_json_formatter_masks_fields_and_keeps_the_line_valid() -> None:
    from common.observability.logging_config import JsonLogFormatter

    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "to %s:\n%s", ("ops", EMAIL), None)
    record.recipient = "Ada Lovelace"  # an extra under a personal key
    record.task_args = [EMAIL]
    out = json.loads(JsonLogFormatter().format(record))
    assert out["message"] == "to ops:\n[email]"
    assert out["recipient"] == "[redacted]" and out["task_args"] == ["[email]"]
    assert out["level"] == "ERROR" and out["logger"] == "x" and "task_id" not in out

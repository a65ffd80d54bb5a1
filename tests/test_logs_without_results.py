"""No personal data in worker logs: Celery's success line does not print what a task returned.

Celery logs "Task <name>[<id>] succeeded in <t>s: <return value>" at INFO. A task returning
a patient's name and email put both in every worker log; the email pattern masking caught
the email only. A real worker (threads, and prefork: reports' pool) runs a task returning
both, and its log has the success line without either.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from common.celery_app import current_app
from devtools.processes import ServiceProcess

NAME = "Alice Liddell"
EMAIL = "alice.liddell@example.org"

# A worker like the services' (common.worker.run_worker, the platform's logging), with one
# task returning personal data; no service task returns any today, the next one might.
WORKER = f"""
import sys
from common.celery_app import create_app
from common.worker import run_worker

app = create_app("piiprobe")


@app.task(name="piiprobe.patient_card")
def patient_card():
    return {{"patient": {NAME!r}, "contact": {EMAIL!r}, "note": "call {NAME} back"}}


@app.task(name="piiprobe.plain_name")
def plain_name():
    return {NAME!r}


run_worker(app, pool=sys.argv[1], concurrency=2, argv=["--without-mingle", "--without-gossip"])
"""


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_worker_log_has_no_task_return_values(pool: str, data_dir: Path) -> None:
    log = data_dir / f"pii-{pool}-worker.log"
    proc = ServiceProcess(f"pii-{pool}", "piiprobe", env={"LOG_LEVEL": "INFO"}, log=log)
    proc.argv = [sys.executable, "-c", WORKER, pool]
    proc.start()
    app = current_app()
    try:
        deadline = time.monotonic() + 60
        while not any(n.startswith("piiprobe@") for r in app.control.ping(timeout=0.5) or [] for n in r):
            assert proc.running and time.monotonic() < deadline, log.read_text()[-3000:]
        card = app.send_task("piiprobe.patient_card", queue="piiprobe").get(timeout=30)
        plain = app.send_task("piiprobe.plain_name", queue="piiprobe").get(timeout=30)
        assert card["patient"] == NAME and plain == NAME  # the caller still gets the value
        time.sleep(0.5)  # the success line is written after the result is stored
    finally:
        proc.stop()
    text = log.read_text()
    succeeded = [line for line in text.splitlines() if "succeeded in" in line]
    print("\n".join(succeeded))
    assert len(succeeded) == 2, text[-3000:]
    assert all("[result hidden]" in line for line in succeeded)
    assert NAME not in text and "Liddell" not in text
    assert EMAIL not in text and "example.org" not in text


def test_filter_keeps_none_and_hides_everything_else() -> None:
    import logging

    from common.masking import HideTaskResultsFilter

    def line(value: str) -> str:
        record = logging.LogRecord(
            "celery.app.trace", logging.INFO, __file__, 1,
            "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
            ({"name": "t", "id": "1", "runtime": 0.1, "return_value": value},), None,
        )  # fmt: skip
        record.data = dict(record.args)  # type: ignore[arg-type]  # as celery.app.trace.info passes it
        HideTaskResultsFilter().filter(record)
        assert record.data == record.args  # a JSON handler printing `data` sees no value either
        return record.getMessage()

    assert line("None").endswith(": None")
    assert line(repr(NAME)).endswith(": [result hidden]")

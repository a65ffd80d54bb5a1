"""End to end: real worker processes of every service on a real Redis.

The producer here is this test process, which imports no service code: it sends by
name through `common`, and each task must run on its own service's worker only.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import common
from common import calls
from common.celery_app import current_app
from common.models import Doctor
from common.routing import SERVICES
from common.service import WorkerService
from contracts import emails, sync
from contracts.declare import InvalidTaskArgumentsError, UnknownTaskError
from devtools.testing.workers import Workers

SYNC_CONCURRENCY_OVERRIDE = 3
POOL_CLASSES = {"threads": "celery.concurrency.thread", "prefork": "celery.concurrency.prefork"}


@pytest.fixture(scope="module")
def workers(data_dir: Path, smtp_sink) -> Iterator[Workers]:
    w = Workers(data_dir)
    mail = {"EMAIL_HOST": smtp_sink.host, "EMAIL_PORT": str(smtp_sink.port)}
    try:
        w.start(
            SERVICES,
            env={
                "emails": mail,
                "sync": {"WORKER_CONCURRENCY": str(SYNC_CONCURRENCY_OVERRIDE)},
            },
        )
        yield w
    finally:
        w.stop()


def ran_on(result) -> str:
    """The worker that executed a task, as recorded by the result backend."""
    return result.backend.get_task_meta(result.id)["worker"]


def test_producer_imports_no_service_code() -> None:
    loaded = {name.split(".")[0] for name in sys.modules}
    assert not loaded & set(SERVICES), "the producer side must reach services by name only"


def test_each_worker_consumes_only_its_own_queue(workers: Workers) -> None:
    active = current_app().control.inspect(timeout=10).active_queues()
    for service, worker in workers.names.items():
        assert [q["name"] for q in active[worker]] == [service]


def declared(service: str) -> WorkerService:
    """A service's declaration, read from its file: this producer must not import the service."""
    path = Path(common.__file__).resolve().parents[2] / "services" / service / "service.py"
    return runpy.run_path(str(path))["SERVICE"]


def test_pool_defaults_per_service_and_config_override(workers: Workers) -> None:
    stats = current_app().control.inspect(timeout=10).stats()
    concurrency = {s: stats[w]["pool"]["max-concurrency"] for s, w in workers.names.items()}
    pools = {s: stats[w]["pool"]["implementation"] for s, w in workers.names.items()}
    for service in ("emails", "payments", "reports"):  # as each service declares itself
        assert concurrency[service] == declared(service).concurrency
        assert pools[service].startswith(POOL_CLASSES[declared(service).pool]), pools
    assert concurrency["sync"] == SYNC_CONCURRENCY_OVERRIDE != declared("sync").concurrency


def test_task_sent_by_name_runs_on_its_own_service_and_no_other(workers: Workers, smtp_sink) -> None:
    doctor = Doctor.objects.create(first_name="Ada", last_name="Lovelace", email="ada.e2e@clinic.example")
    sent = {
        "emails": calls.delay("emails.send_welcome_email", doctor.pk),
        "sync": calls.delay("sync.validate_doctor", doctor.pk),
        "reports": calls.delay("reports.generate_weekly_report"),
        "payments": calls.delay("payments.process_payment", 987654),  # no such appointment: fails there
    }
    assert sent["emails"].get(timeout=30) == {"doctor_id": doctor.pk, "status": "sent"}
    assert sent["sync"].get(timeout=30) == {"doctor_id": doctor.pk, "valid": True, "problems": []}
    assert sent["reports"].get(timeout=30)["status"] == "queued"
    with pytest.raises(Exception, match="Appointment matching query does not exist"):
        sent["payments"].get(timeout=30)
    for service, result in sent.items():
        assert ran_on(result) == workers.names[service]

    messages = smtp_sink.wait_for(1)
    assert [m["To"] for m in messages] == ["ada.e2e@clinic.example"]
    assert messages[0]["Subject"] == "Welcome to our platform"
    assert "Welcome Dr. Ada!" in messages[0].get_payload()


def test_chain_across_services_passes_results_between_queues(workers: Workers) -> None:
    doctor = Doctor.objects.create(first_name="Grace", last_name="Hopper", email="grace.e2e@clinic.example")
    flow = sync.validate_doctor.s(doctor.pk) | emails.send_onboarding_email.s()
    result = flow.apply_async()
    assert result.get(timeout=30) == {
        "doctor_id": doctor.pk,
        "valid": True,
        "problems": [],
        "email_sent": True,
    }
    assert ran_on(result) == workers.names["emails"]
    assert ran_on(result.parent) == workers.names["sync"]


def test_bad_calls_are_refused_before_reaching_any_worker(workers: Workers, redis_client) -> None:
    before = {s: redis_client.llen(s) for s in SERVICES}
    with pytest.raises(UnknownTaskError):
        calls.delay("emails.no_such_task")
    with pytest.raises(InvalidTaskArgumentsError):
        calls.delay("payments.process_payment", "12")
    assert {s: redis_client.llen(s) for s in SERVICES} == before

"""Mixed versions, for real (issue 9, item 5): an old producer with new workers, and the reverse.

During a rolling deploy the previous release and the new code run side by side: a producer
built from one sends to workers built from the other. This test runs exactly that with real
processes from two checkouts on one real Redis (a database number per direction) and one
PostgreSQL database migrated by the new code (conftest.py; the SMTP, CRM and gateway
sandboxes of common's test plugin as peers):

- direction A: the four workers from the NEW side (this checkout's `libs` and `services`),
  a producer process from the OLD side sending every task the old side declares;
- direction B: the four workers from the OLD side, a producer from the NEW side sending every
  task both sides declare (a task new in the new side has no old worker: listed as skipped).

Every task sent must end SUCCESS on the other side's worker within TASK_TIMEOUT, not
dead-lettered on receipt (`DeadLetteredError`: unknown task, invalid arguments), refused by
the producer, nor failed; the test prints what ran (task, direction, state, seconds from send
to the stored result, worker). A task declared without a sample call in SAMPLES fails it.

The old side is a git commit, unpacked with `git archive REF libs services`: MIXED_VERSIONS_BASE
if set, else the newest service release tag (`<service>@<version>`), else HEAD~1 (else HEAD).
Both layouts of the contracts work there: per-service `libs/contracts`, or the older
`common.catalogue`. Each side's task list is read with `scripts/contracts_check.py --dump`.

Every producer and worker runs as `python -P` with only its own side's `libs` and `services`
on PYTHONPATH, from a scratch directory, with no PEX_* variables: nothing of the other side
can be imported. It needs git and the real repository, so it runs outside Pants (`.ci/run`):

    venv=$(scripts/dev-venv)
    PYTHONPATH=libs:services:. "$venv/bin/python" -m pytest tests/mixed_versions -p no:cacheprovider
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import redis

import common

ROOT = Path(__file__).resolve().parents[2]
# The new side is the code this test runs with (this checkout's libs/ and services/).
NEW_LIBS = Path(common.__file__).resolve().parents[1]
NEW_SERVICES = NEW_LIBS.parent / "services"
PRODUCER = Path(__file__).resolve().parent / "producer.py"
DUMP = ROOT / "scripts" / "contracts_check.py"
SERVICES = ("emails", "payments", "reports", "sync")

WORKER_START_TIMEOUT = 60.0  # all four workers of a side log "ready"
TASK_TIMEOUT = 60.0  # every task of a direction has a final state, counted from its last send
STOP_TIMEOUT = 10.0  # warm shutdown, then SIGKILL
# Every wait above also ends at this many seconds from the start, so the whole test, stops
# included, stays within 3 minutes.
BUDGET = 150.0
READY = ("SUCCESS", "FAILURE", "REVOKED")


def die_with_parent() -> None:
    """A child gets SIGTERM when this test process dies (Linux), even if killed outright."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: Processes.stop() still ends everything
        pass


@dataclass(frozen=True)
class Rows:
    """Database rows a direction's tasks work on (each direction has its own)."""

    doctor_id: int
    appointment_id: int
    report_id: int


# One sample call per task, positional arguments from the rows: ids and flags only, in the
# shapes of libs/contracts. A task declared on either side without an entry fails the test,
# so a new task gets a sample here before it ships.
SAMPLES: dict[str, Callable[[Rows], list[Any]]] = {
    "emails.send_welcome_email": lambda r: [r.doctor_id],
    "emails.send_onboarding_email": lambda r: [{"doctor_id": r.doctor_id, "valid": True, "problems": []}],
    "emails.send_appointment_reminder": lambda r: [r.appointment_id],
    "emails.send_daily_reminders": lambda r: [],
    "emails.notify_admin": lambda r: [[r.report_id, {"event": "mixed-versions", "doctor_id": r.doctor_id}]],
    "payments.process_payment": lambda r: [r.appointment_id],
    "payments.reconcile_payments": lambda r: [],
    "reports.generate_large_report": lambda r: [r.report_id],
    "reports.generate_weekly_report": lambda r: [],
    "sync.validate_doctor": lambda r: [r.doctor_id],
    "sync.create_account": lambda r: [{"doctor_id": r.doctor_id, "valid": True, "problems": []}],
    "sync.sync_doctor_to_external_system": lambda r: [r.doctor_id],
    "sync.sync_all_doctors": lambda r: [],
    "sync.echo": lambda r: [7],
    "sync.probe_unique": lambda r: [7, 1],
    "sync.health_check": lambda r: [],
}


# --- the two sides -----------------------------------------------------------------------
@dataclass
class Side:
    name: str  # "old" or "new"
    label: str  # what it was built from
    libs: Path
    services: Path
    tasks: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        return "contracts" if (self.libs / "contracts").is_dir() else "catalogue"

    def env(self, shared: dict[str, str]) -> dict[str, str]:
        """The environment of one of this side's processes: its own code only."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PEX_", "__PEX_")) and k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
        }
        env.update(shared)
        env.update(
            PYTHONPATH=f"{self.libs}{os.pathsep}{self.services}",
            DJANGO_SETTINGS_MODULE="common.django_settings",
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env


def git(*args: str) -> bytes:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=30)
    if proc.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def base_ref() -> tuple[str, str]:
    """(ref, why): the old side's git revision."""
    if os.environ.get("MIXED_VERSIONS_BASE"):
        return os.environ["MIXED_VERSIONS_BASE"], "MIXED_VERSIONS_BASE"
    tags = git("tag", "--list", "*@*", "--sort=-creatordate").decode().split()
    if tags:
        return tags[0], "the newest release tag"
    try:
        git("rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")
        return "HEAD~1", "no release tag: the previous commit"
    except RuntimeError:
        return "HEAD", "no release tag and no previous commit"


def materialise(ref: str, into: Path) -> tuple[str, Path, Path]:
    """`git archive REF libs services` unpacked under `into`: (commit, libs, services)."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}").decode().strip()
    with tarfile.open(fileobj=BytesIO(git("archive", "--format=tar", sha, "libs", "services"))) as tar:
        tar.extractall(into, filter="data")
    return sha, into / "libs", into / "services"


def declared_tasks(side: Side, shared: dict[str, str], scratch: Path) -> dict[str, Any]:
    """The tasks `side` declares, as `scripts/contracts_check.py --dump` reads them."""
    proc = subprocess.run(
        [sys.executable, "-P", str(DUMP), "--dump"],
        cwd=scratch,
        env=side.env(shared),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"reading the {side.name} side's contracts: {proc.stderr.strip()[-2000:]}"
    return json.loads(proc.stdout)["tasks"]


# --- processes ---------------------------------------------------------------------------
class Processes:
    """Every process this test starts, each in its own process group; stop() ends them all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.procs.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        """TERM (Celery's warm shutdown), then KILL the whole group after STOP_TIMEOUT."""
        procs = list(self.procs if procs is None else procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group too: a prefork pool's children
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            self.procs.remove(proc)


def tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return f"(no {path.name})"
    return f"--- {path.name} (tail) ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_workers(
    side: Side, shared: dict[str, str], procs: Processes, scratch: Path, budget: float
) -> tuple[list[subprocess.Popen[bytes]], list[Path], float]:
    """The four workers of `side`, each ready ("<name> ready." logged): (processes, logs, seconds)."""
    started = time.monotonic()
    workers, logs = [], []
    for service in SERVICES:
        log = scratch / f"{side.name}-{service}-worker.log"
        hostname = f"{service}@mixed-{side.name}"
        argv = [sys.executable, "-P", "-m", f"{service}.worker", "--without-mingle", "--without-gossip"]
        workers.append(procs.start([*argv, f"--hostname={hostname}"], side.env(shared), scratch, log))
        logs.append(log)
    waiting = {
        f"{s}@mixed-{side.name} ready.": (w, log) for s, w, log in zip(SERVICES, workers, logs, strict=True)
    }
    deadline = min(started + WORKER_START_TIMEOUT, budget)
    while waiting:
        for marker, (worker, log) in list(waiting.items()):
            if log.exists() and marker in log.read_text(errors="replace"):
                del waiting[marker]
            elif worker.poll() is not None:
                pytest.fail(f"a {side.name} worker exited during start-up ({worker.returncode})\n{tail(log)}")
        if waiting and time.monotonic() > deadline:
            pytest.fail(
                f"{side.name} workers not ready after {time.monotonic() - started:.0f} s: "
                + ", ".join(m.split()[0] for m in waiting)
                + "\n"
                + "\n".join(tail(log) for _, log in waiting.values())
            )
        time.sleep(0.1)
    return workers, logs, time.monotonic() - started


@dataclass
class Outcome:
    task: str
    direction: str
    state: str
    seconds: float | None = None
    worker: str = ""
    detail: str = ""
    expected_worker: str = ""  # the suffix of the hostnames of the workers it must run on

    @property
    def ok(self) -> bool:
        return self.state == "SUCCESS" or self.state.startswith("SKIPPED")


def send(
    side: Side, shared: dict[str, str], calls: list[dict[str, Any]], scratch: Path, budget: float
) -> list[dict[str, Any]]:
    """Run `side`'s producer process on `calls`; its lines, one per call."""
    proc = subprocess.run(
        [sys.executable, "-P", str(PRODUCER)],
        input=json.dumps(calls),
        cwd=scratch,
        env=side.env(shared),
        capture_output=True,
        text=True,
        timeout=max(1.0, min(60.0, budget - time.monotonic())),
    )
    lines = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("MIXED ")]
    assert proc.returncode == 0 and len(lines) == len(calls) + 1, (
        f"the {side.name} producer failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
    origin, *lines = lines
    foreign = [m for m in origin["modules"] if not Path(m).is_relative_to(side.libs)]
    assert not foreign, f"the {side.name} producer imported code from elsewhere: {foreign}"
    return lines


def done_at(meta: dict[str, Any], default: float) -> float:
    """When the worker stored the final state (`date_done`, UTC), as a Unix time."""
    try:
        done = datetime.fromisoformat(str(meta["date_done"]))
    except (KeyError, ValueError):
        return default
    return (done if done.tzinfo else done.replace(tzinfo=UTC)).timestamp()


def wait_for_results(
    client: redis.Redis, direction: str, sent: list[dict[str, Any]], consumer: Side, budget: float
) -> list[Outcome]:
    """Each sent task's final state, read from the result backend as stored (side-neutral JSON)."""
    suffix = f"@mixed-{consumer.name}"
    outcomes = {s["id"]: Outcome(s["task"], direction, "PENDING", expected_worker=suffix) for s in sent}
    started = time.monotonic()
    deadline = min(started + TASK_TIMEOUT, budget)
    pending = set(outcomes)
    while pending and time.monotonic() < deadline:
        for task_id in list(pending):
            raw = client.get(f"celery-task-meta-{task_id}")
            meta = json.loads(raw) if raw else {}
            state = meta.get("status", "PENDING")
            outcomes[task_id].state = state
            if state in READY:
                pending.discard(task_id)
                outcome = outcomes[task_id]
                sent_at = next(s["sent_at"] for s in sent if s["id"] == task_id)
                outcome.seconds = done_at(meta, default=time.time()) - sent_at
                outcome.worker = str(meta.get("worker") or "")
                result = meta.get("result")
                if state != "SUCCESS" and isinstance(result, dict):
                    outcome.detail = f"{result.get('exc_type')}: {result.get('exc_message')}"[:200]
        time.sleep(0.05)
    for task_id in pending:
        outcomes[task_id].detail = f"no final state after {time.monotonic() - started:.0f} s"
    return list(outcomes.values())


# --- the test ----------------------------------------------------------------------------
def make_rows(tag: str) -> Rows:
    from django.db import connection
    from django.utils import timezone

    from common.models import Appointment, Doctor, Patient, Report, ReportItem

    doctor = Doctor.objects.create(
        first_name="Mixed", last_name=f"Versions {tag}", email=f"{tag}@mixed.example"
    )
    patient = Patient.objects.create(
        name=f"Patient {tag}", email=f"patient-{tag}@mixed.example", gateway_customer_id=f"cus_mixed_{tag}"
    )
    appointment = Appointment.objects.create(
        doctor=doctor,
        patient=patient,
        scheduled_at=timezone.now() + timedelta(hours=2),
        amount=Decimal("80.00"),
        currency="EUR",
    )
    report = Report.objects.create(name=f"Mixed versions {tag}")
    ReportItem.objects.bulk_create(
        ReportItem(report=report, label=f"item {i}", value=Decimal(i)) for i in range(1, 6)
    )
    connection.close()  # this process holds no connection while the workers run
    return Rows(doctor.pk, appointment.pk, report.pk)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The old checkout, the processes' working directory and their logs; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mixed-versions-") as tmp:
        yield Path(tmp)


@pytest.fixture
def processes(scratch: Path) -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop()


def test_old_and_new_producers_and_workers_run_every_task_both_ways(
    redis_url: str, data_dir: Path, peers_env: dict[str, str], scratch: Path, processes: Processes, capsys
) -> None:
    from django.db import connection

    from common.settings import get_settings

    began = time.monotonic()
    budget = began + BUDGET
    ref, why = base_ref()
    sha, old_libs, old_services = materialise(ref, scratch / "old")
    head = git("rev-parse", "--short", "HEAD").decode().strip()
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "libs", "services") else ""
    old = Side("old", f"{ref} = {sha[:10]} ({why})", old_libs, old_services)
    new = Side("new", f"this checkout, HEAD {head}{dirty}", NEW_LIBS, NEW_SERVICES)
    base = redis_url.rsplit("/", 1)[0]
    shared = {
        **peers_env,
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": get_settings().effective_database_url,  # migrated by the new code
        "ENVIRONMENT": "test",
    }
    for side in (old, new):
        side.tasks = declared_tasks(side, {**shared, "REDIS_URL": f"{base}/0"}, scratch)
    missing = sorted((set(old.tasks) | set(new.tasks)) - set(SAMPLES))
    assert not missing, f"no sample call in SAMPLES for {', '.join(missing)}: add one per new task"
    prepared = time.monotonic() - began

    # One Redis database per direction on the one server: nothing left queued by one
    # direction's fan-outs can reach the other's workers.
    directions = [
        ("A: old producer -> new workers", old, new, f"{base}/1", sorted(old.tasks), []),
        (
            "B: new producer -> old workers",
            new,
            old,
            f"{base}/2",
            sorted(set(new.tasks) & set(old.tasks)),
            sorted(set(new.tasks) - set(old.tasks)),
        ),
    ]
    outcomes: list[Outcome] = []
    measured: list[str] = []
    logs: list[Path] = []
    for i, (direction, producer, consumer, url, tasks, skipped) in enumerate(directions):
        env = {**shared, "REDIS_URL": url}
        rows = make_rows(f"dir{i}-{int(time.time())}")
        workers, worker_logs, startup = start_workers(consumer, env, processes, scratch, budget)
        logs += worker_logs
        calls = [{"task": t, "args": SAMPLES[t](rows)} for t in tasks]
        t0 = time.monotonic()
        lines = send(producer, env, calls, scratch, budget)
        send_seconds = time.monotonic() - t0
        refused = [line for line in lines if "error" in line]
        outcomes += [
            Outcome(r["task"], direction, "REFUSED", detail=f"by the {producer.name} producer: {r['error']}")
            for r in refused
        ]
        client = redis.Redis.from_url(url)
        try:
            sent = [line for line in lines if "id" in line]
            outcomes += wait_for_results(client, direction, sent, consumer, budget)
        finally:
            client.close()
        outcomes += [
            Outcome(
                t, direction, f"SKIPPED: new in the {producer.name} side, no {consumer.name} worker has it"
            )
            for t in skipped
        ]
        t1 = time.monotonic()
        processes.stop(workers)
        measured.append(
            f"{direction}: workers ready in {startup:.1f} s, "
            f"{len(calls)} tasks sent in {send_seconds:.1f} s, "
            f"workers stopped in {time.monotonic() - t1:.1f} s"
        )

    total = time.monotonic() - began
    width = max(len(o.task) for o in outcomes)
    table = [
        f"Mixed versions: old = {old.label}, {old.layout} layout; new = {new.label}, {new.layout} layout; "
        f"one Redis, one {connection.vendor} database migrated by the new code",
        f"{'task':<{width}}  {'direction':<31}  {'state':<8}  {'seconds':>7}  worker / detail",
    ]
    for o in outcomes:
        secs = f"{o.seconds:7.2f}" if o.seconds is not None else " " * 7
        state = o.state if len(o.state) <= 8 and not o.state.startswith("SKIPPED") else o.state.split(":")[0]
        extra = o.detail or o.worker
        if o.state.startswith("SKIPPED"):
            extra = o.state.split(": ", 1)[1]
        table.append(f"{o.task:<{width}}  {o.direction:<31}  {state:<8}  {secs}  {extra}")
    ran = [o for o in outcomes if o.seconds is not None]
    table += measured
    table.append(
        f"{sum(o.state == 'SUCCESS' for o in outcomes)}/{len(ran)} SUCCESS, "
        f"{sum(o.state.startswith('SKIPPED') for o in outcomes)} skipped; prepared in {prepared:.1f} s, "
        f"whole test {total:.1f} s"
    )
    with capsys.disabled():
        print("\n" + "\n".join(table))

    bad = [o for o in outcomes if not o.ok]
    wrong_worker = [
        o for o in outcomes if o.state == "SUCCESS" and not o.worker.endswith(o.expected_worker)
    ]
    assert not bad and not wrong_worker, (
        "tasks that did not run on the other side's worker:\n"
        + "\n".join(f"  {o.task} [{o.direction}]: {o.state} {o.detail}" for o in bad + wrong_worker)
        + "\n"
        + "\n".join(tail(log) for log in logs)
    )

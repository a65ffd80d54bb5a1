"""Run the whole platform locally and drive a short workload through every service.

Uses what the environment configures, and embedded defaults for the rest: SQLite
under ./var, a redis-server it starts itself when REDIS_URL is unset, and loopback
sandboxes for SMTP, the CRM and the payment gateway. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import time
from contextlib import ExitStack
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from common.routing import SERVICES


def log(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


LABELS = {
    "redis": "redis-server",
    "smtp": "an SMTP sink",
    "crm": "a CRM sandbox",
    "gateway": "a payment gateway sandbox",
}


def start_peers(stack: ExitStack, data_dir: Path) -> dict[str, object]:
    """Start a local stand-in for every peer the environment does not name; return them."""
    from devtools.platform import LocalPlatform

    platform = stack.enter_context(LocalPlatform(data_dir, use_environment=True))
    platform.start()
    peers = platform.started()
    for name, peer in peers.items():
        where = getattr(peer, "url", None) or f"{peer.host}:{peer.port}"
        log(f"started {LABELS[name]} at {where}")
    if "FLOWER_PASSWORD" not in os.environ:
        os.environ["FLOWER_PASSWORD"] = secrets.token_urlsafe(12)
    return peers


def prepare_database() -> str:
    """Migrate and make sure an admin login exists; return how to log in."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    user_model = get_user_model()
    username = os.environ.get("ADMIN_USERNAME", "admin")
    if user_model.objects.filter(username=username).exists():
        return f"{username} / (your existing password)"
    password = os.environ.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    user_model.objects.create_superuser(username, "admin@example.com", password)
    return f"{username} / {password}"


def run_workload(peers: dict[str, object]) -> None:
    from celery import chord
    from django.utils import timezone

    from common.models import Appointment, Doctor, Patient, Report, ReportItem
    from contracts import emails, payments, reports, sync

    stamp = int(time.time())
    doctors = [
        Doctor.objects.create(
            first_name=f, last_name=last, email=f"{f.lower()}.{stamp}@clinic.example", specialty=sp
        )
        for f, last, sp in (
            ("Ada", "Lovelace", "cardiology"),
            ("Grace", "Hopper", "neurology"),
            ("Alan", "Turing", "paediatrics"),
        )
    ]
    log(f"created doctors {[d.pk for d in doctors]}")

    log("onboarding each doctor: sync.validate_doctor -> sync.create_account -> emails.send_onboarding_email")
    onboarded = [
        (
            sync.validate_doctor.s(d.pk) | sync.create_account.s() | emails.send_onboarding_email.s()
        ).apply_async()
        for d in doctors
    ]
    for result in onboarded:
        out = result.get(timeout=60)
        log(f"  doctor {out['doctor_id']}: CRM id {out.get('external_id')}, emailed={out['email_sent']}")

    batch = chord((sync.validate_doctor.s(d.pk) for d in doctors), emails.notify_admin.s())
    out = batch.apply_async().get(timeout=60)
    log(f"chord validate x{len(doctors)} -> emails.notify_admin: {out}")

    patient = Patient.objects.create(
        name="Pat Example", email=f"pat.{stamp}@mail.example", gateway_customer_id="cus_demo"
    )
    appt = Appointment.objects.create(
        doctor=doctors[0],
        patient=patient,
        amount=Decimal("80.00"),
        scheduled_at=timezone.now() + timedelta(hours=3),
    )
    out = payments.process_payment.delay(appt.pk).get(timeout=60)
    log(f"payments.process_payment({appt.pk}): {out}")
    payments.process_payment.delay(appt.pk)  # a duplicate: the worker ignores it
    time.sleep(1)
    charges = getattr(peers.get("gateway"), "charges", [])
    log(f"  sent again for the same appointment: the gateway holds {len(charges)} charge(s), not 2")

    report = Report.objects.create(name=f"Demo revenue report {stamp}")
    ReportItem.objects.bulk_create(
        ReportItem(report=report, label=f"line {i}", value=Decimal(i % 97)) for i in range(100_000)
    )
    result = reports.generate_large_report.delay(report.pk)
    seen = -1
    while not result.ready():
        if result.state == "PROGRESS" and result.info and result.info["current"] != seen:
            seen, total = result.info["current"], result.info["total"]
            bar = "#" * (30 * seen // max(total, 1))
            log(f"report {report.pk} [{bar:<30}] {seen}/{total}")
        time.sleep(0.1)
    log(f"reports.generate_large_report({report.pk}): {result.get(timeout=5)}")

    out = sync.sync_all_doctors.delay().get(timeout=60)
    log(f"sync.sync_all_doctors: {out}")

    smtp: Any = peers.get("smtp")
    if smtp is not None:
        time.sleep(1)
        log(
            f"SMTP sink received {len(smtp.messages)} message(s): "
            f"{sorted({m['Subject'] for m in smtp.messages})}"
        )
    gateway: Any = peers.get("gateway")
    if gateway is not None:
        log(f"gateway recorded {len(gateway.charges)} charge(s)")


def wait_http(url: str, status: int, timeout: float = 60) -> None:
    """Wait until `url` answers with `status` (a process is up, not merely started)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                got = response.status
        except urllib.error.HTTPError as exc:
            got = exc.code
        except OSError:
            got = None
        if got == status:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} answered {got}, expected {status}")
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exit-after-demo", action="store_true", help="stop once the workload is done")
    parser.add_argument("--no-demo", action="store_true", help="start everything, run no workload")
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parents[1]
    os.environ.setdefault("DATA_DIR", str(root / "var"))
    logs = Path(os.environ["DATA_DIR"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd chatter

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    with ExitStack() as stack:
        try:
            peers = start_peers(stack, Path(os.environ["DATA_DIR"]))
            import django

            django.setup()
            login = prepare_database()

            from common.celery_app import current_app
            from common.settings import get_settings
            from devtools.platform import platform_process, worker_process
            from devtools.ports import free_port
            from devtools.processes import ServiceProcess, wait_for_workers

            web_port = os.environ.get("WEB_PORT") or str(free_port())
            flower_port = os.environ.get("FLOWER_PORT") or str(free_port())
            # Each worker serves Prometheus /metrics on a port of its own (common.observability.metrics).
            metrics_ports = {s: str(free_port()) for s in SERVICES}
            metrics_env = {"METRICS_ADDRESS": "127.0.0.1"}
            # Workers, beat and flower run on the backend's settings (no admin); web on its own.
            procs = [
                *(
                    worker_process(s, logs / f"{s}.log", env={**metrics_env, "METRICS_PORT": port})
                    for s, port in metrics_ports.items()
                ),
                platform_process("beat", "scheduler.beat", logs / "beat.log"),
                platform_process(
                    "flower", "monitor.flower", logs / "flower.log", env={"FLOWER_PORT": flower_port}
                ),
                ServiceProcess(
                    "web", "web.manage", ["serve", "--bind", f"127.0.0.1:{web_port}"], log=logs / "web.log"
                ),
                # Publishes tasks the outbox kept while Redis was unreachable.
                ServiceProcess("outbox-relay", "web.manage", ["relay_outbox"], log=logs / "outbox-relay.log"),
            ]
            for p in procs:
                stack.callback(p.stop)
                p.start()
            log(f"started {', '.join(p.name for p in procs)}; logs in {logs}")
            app = current_app()
            workers = wait_for_workers(app, SERVICES, timeout=90)
            log(f"workers up: {', '.join(sorted(workers.values()))}")

            wait_http(f"http://127.0.0.1:{web_port}/healthz", 200)
            wait_http(f"http://127.0.0.1:{flower_port}/", 401)  # up, and refusing anonymous access
            log("web and flower answer")
            if not args.no_demo:
                run_workload(peers)
            dead = [p for p in procs if not p.running]
            if dead:
                for p in dead:
                    log(f"{p.name} exited with {p.proc.returncode}; see {logs / (p.name + '.log')}")  # type: ignore[union-attr]
                return 1
            s = get_settings()
            log(f"admin:  http://127.0.0.1:{web_port}/admin/  (login {login})")
            log(
                f"flower: http://127.0.0.1:{flower_port}/  (login {s.flower_user} / "
                f"{os.environ['FLOWER_PASSWORD']})"
            )
            for service, port in metrics_ports.items():
                log(f"metrics: {service:<8} http://127.0.0.1:{port}/metrics")
            if args.exit_after_demo:
                log("demo done; stopping")
                return 0
            log("running; Ctrl-C stops everything")
            while True:
                for p in procs:
                    if not p.running:
                        log(f"{p.name} exited with {p.proc.returncode}; see {logs / (p.name + '.log')}")  # type: ignore[union-attr]
                        return 1
                time.sleep(1)
        except KeyboardInterrupt:
            log("stopping (waiting for running tasks to finish)...")
            return 0
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children


if __name__ == "__main__":
    sys.exit(main())

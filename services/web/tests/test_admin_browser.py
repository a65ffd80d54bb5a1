"""The admin, as an operator uses it: headless Chromium against the real gunicorn server."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from common.models import Doctor, Report, ReportItem
from devtools.processes import ServiceProcess
from devtools.testing.waiting import wait_until
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def workers(data_dir: Path, peers_env: dict[str, str]) -> Iterator[Workers]:
    """The workers the admin's saves and actions send to, on the session's SMTP/CRM sandboxes."""
    w = Workers(data_dir)
    services = ["emails", "sync", "reports"]
    env = {s: dict(peers_env) for s in services}
    env["reports"]["REPORT_PROGRESS_INTERVAL"] = "0.05"
    try:
        w.start(services, env=env)
        yield w
    finally:
        w.stop()


def test_admin_requires_login(page, operator) -> None:
    page.goto("/admin/common/report/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", operator.username)
    page.fill("#id_password", "wrong")
    page.click("input[type=submit]")
    assert "/admin/login/" in page.url
    assert page.locator(".errornote").is_visible()


def test_a_periodic_task_created_in_the_admin_fires_on_its_queue(
    log_in, page, data_dir, redis_client
) -> None:
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    log_in(page)
    page.goto("/admin/django_celery_beat/periodictask/add/")
    page.fill("#id_name", "browser-made-health-check")
    page.fill("#id_task", "sync.health_check")
    page.select_option("#id_interval", value=str(every_second.pk))
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/django_celery_beat/periodictask/")
    task = PeriodicTask.objects.get(name="browser-made-health-check")
    assert task.task == "sync.health_check" and task.enabled and task.interval == every_second

    redis_client.delete("sync")
    beat = ServiceProcess(
        "beat",
        "scheduler.beat",
        ["--max-interval=1"],
        env={"DJANGO_SETTINGS_MODULE": "common.django_settings"},
        log=data_dir / "beat.log",
    ).start()
    try:
        deadline = time.monotonic() + 60
        while redis_client.llen("sync") == 0:
            assert beat.running and time.monotonic() < deadline, (data_dir / "beat.log").read_text()[-2000:]
            time.sleep(0.2)
    finally:
        beat.stop()
    message = json.loads(redis_client.lindex("sync", 0))
    assert message["headers"]["task"] == "sync.health_check"


def test_operator_sees_a_reports_progress(log_in, page) -> None:
    Report.objects.create(name="Quarterly revenue", status="running", progress_current=50, progress_total=200)
    log_in(page)
    page.goto("/admin/common/report/")
    row = page.locator("tr", has_text="Quarterly revenue")
    assert "50/200 (25%)" in row.inner_text()
    assert "Running" in row.inner_text()


def test_operator_replays_and_purges_dead_letters(log_in, page, store) -> None:
    """The page's buttons as a browser submits them: CSRF token, formaction, the confirmation step."""
    from web.tests.deadletters_testing import a_queue, dead, envelope

    queue = a_queue()
    task_id, raw = envelope([["not-an-int"], {}, {}])
    entry = dead(store, queue, "invalid-arguments", raw, task_id)
    log_in(page)
    page.click("#operations-deadletters a")
    page.select_option("select[name=queue]", queue)
    page.click("#deadletters-filter input[type=submit]")
    row = page.locator("tr.deadletter", has_text=entry.id)
    assert "invalid-arguments" in row.inner_text()

    row.locator("input[name=ids]").check()
    page.click("input[name=replay]")
    refused = page.locator(".messagelist .error").inner_text()
    assert f"Refused {entry.id}: the arguments do not fit today's contract" in refused

    page.locator("tr.deadletter", has_text=entry.id).locator("input[name=ids]").check()
    page.click("input[name=purge]")
    assert "Delete these 1 dead letter(s) for good?" in page.locator("#purge-question").inner_text()
    assert store.get(entry.id) is not None
    page.click("input[value='Yes, purge 1']")
    assert "Removed 1 dead letter(s)." in page.locator(".messagelist .success").inner_text()
    assert store.get(entry.id) is None


def test_operator_adds_a_doctor_who_gets_one_welcome_mail_and_one_crm_record(
    log_in,
    page,
    workers,
    smtp_sink,
    crm_sandbox,
) -> None:
    email = f"katherine-{secrets.token_hex(3)}@clinic.example"
    log_in(page)
    page.goto("/admin/common/doctor/add/")
    page.fill("#id_first_name", "Katherine")
    page.fill("#id_last_name", "Johnson")
    page.fill("#id_email", email)
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/common/doctor/")
    doctor = Doctor.objects.get(email=email)

    def mails() -> list:
        return [m for m in smtp_sink.messages if email in m["X-Envelope-To"]]

    wait_until(lambda: mails() and str(doctor.pk) in crm_sandbox.doctors, timeout=60)
    time.sleep(2)  # room for a duplicate, of which there must be none
    assert len(mails()) == 1 and mails()[0]["Subject"] == "Welcome to our platform"
    assert crm_sandbox.doctors[str(doctor.pk)]["writes"] == 1


def test_operator_generates_a_report_and_watches_it_then_downloads_it(
    log_in, page, browser, web, workers
) -> None:
    report = Report.objects.create(name=f"Browser revenue {secrets.token_hex(3)}")
    ReportItem.objects.bulk_create(
        (ReportItem(report=report, label=f"item {i}", value=1) for i in range(300_000)), batch_size=10_000
    )
    log_in(page)
    page.goto("/admin/common/report/")
    page.locator("tr", has_text=report.name).locator("input.action-select").check()
    page.select_option("select[name=action]", "generate_report")
    page.click("button[name=index]")
    success = page.locator(".messagelist .success").inner_text()
    assert "Queued 1 report(s)" in success and report.name in success

    # Every text the progress line shows, recorded in the page as it changes (no reload).
    page.click(f".messagelist a:text('{report.name}')")
    page.wait_for_url(f"**/admin/common/report/{report.pk}/change/")
    page.evaluate(
        """() => { window.seen = [];
        const text = document.getElementById('report-progress-text');
        new MutationObserver(() => window.seen.push(text.textContent))
            .observe(text, {childList: true, characterData: true, subtree: true}); }"""
    )
    link = page.locator("#report-download")
    link.wait_for(state="visible", timeout=120_000)
    seen = page.evaluate("window.seen")
    assert seen and seen[-1] == "complete: 300000/300000 (100%)", seen
    assert any(t.startswith("running: ") and "(100%)" not in t for t in seen), seen

    with page.expect_download() as download:
        link.click()
    content = Path(download.value.path()).read_text()
    assert content.startswith("item,label,value") and content.rstrip().endswith("300000.00")

    # Not logged in: the file goes to nobody, the request lands on the login page.
    stranger = browser.new_context(base_url=web)
    try:
        anonymous = stranger.new_page()
        anonymous.goto(f"/admin/common/report/{report.pk}/download/")
        assert "/admin/login/" in anonymous.url
    finally:
        stranger.close()

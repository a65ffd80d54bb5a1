"""The contract check, run for real against a scratch git repository holding the contracts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import contracts
from scripts import contracts_check

CHECK = Path(contracts_check.__file__).resolve()
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with a copy of libs/contracts committed as HEAD."""
    shutil.copytree(
        Path(contracts.__file__).parent,
        tmp_path / "libs" / "contracts",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env = {**os.environ, **GIT_ENV}
    for cmd in (["init", "-q"], ["add", "libs"], ["commit", "-q", "-m", "contracts"]):
        subprocess.run(["git", "-C", str(tmp_path), *cmd], check=True, env=env)
    return tmp_path


def edit(repo: Path, *replacements: tuple[str, str]) -> None:
    """Replace each `old` in whichever contracts module holds it."""
    for old, new in replacements:
        [path] = [p for p in (repo / "libs" / "contracts").glob("*.py") if old in p.read_text()]
        path.write_text(path.read_text().replace(old, new, 1))


def check(repo: Path, ref: str = "HEAD") -> tuple[int, list[str]]:
    proc = subprocess.run(
        [sys.executable, str(CHECK), "--repo", str(repo), "--against", ref],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def declared(repo: Path) -> int:
    modules = (repo / "libs" / "contracts").glob("*.py")
    return sum(len(re.findall(r"^@SERVICE\.task\b", p.read_text(), re.M)) for p in modules)


def test_unchanged_contracts_are_compatible(repo: Path) -> None:
    code, lines = check(repo)
    want = f"contracts compatible with HEAD: {declared(repo)} tasks, 0 additive changes"
    assert (code, lines[0]) == (0, want)
    assert len(lines) == 1


def test_additive_changes_pass_and_are_listed(repo: Path) -> None:
    edit(
        repo,
        # a new task
        (
            "@SERVICE.task\ndef echo(",
            '@SERVICE.task\ndef ping(value: int) -> int:\n    """New."""\n\n\n@SERVICE.task\ndef echo(',
        ),
        # a new parameter with a default
        (
            "def process_payment(appointment_id: int)",
            "def process_payment(appointment_id: int, note: str = '')",
        ),
        # a type widened
        ("def echo(value: int)", "def echo(value: int | str)"),
    )
    code, lines = check(repo)
    assert code == 0, lines
    assert lines == [
        f"contracts compatible with HEAD: {declared(repo)} tasks, 3 additive changes",
        "  additive sync.ping: new task (queue sync)",
        "  additive payments.process_payment: new parameter 'note' with a default",
        "  additive sync.echo: parameter 'value' type widened from int to int | str",
    ]


def test_each_breaking_change_gets_its_line(repo: Path) -> None:
    edit(
        repo,
        # task removed
        (
            '@SERVICE.task\ndef health_check() -> dict[str, Any]:\n'
            '    """Every 300 s: check the broker and database answer."""\n',
            "",
        ),
        # queue changed, the name kept
        (
            "queue=self.service,",
            'queue="slow" if name == "reports.generate_weekly_report" else self.service,',
        ),
        # parameter renamed
        ("def process_payment(appointment_id: int)", "def process_payment(appointment_pk: int)"),
        # a new parameter without a default, and a type narrowed
        (
            "def notify_admin(data: int | AdminItem | list[int | AdminItem])",
            "def notify_admin(data: AdminItem, level: str)",
        ),
        # a type changed to something unrelated (treated as narrowed)
        ("def create_account(data: DoctorCheck)", "def create_account(data: int)"),
        # parameter removed
        ("def send_welcome_email(doctor_id: int)", "def send_welcome_email()"),
        # a new task is fine even among breaking changes (not listed)
        (
            "@SERVICE.task\ndef echo(",
            '@SERVICE.task\ndef ping() -> int:\n    """New."""\n\n\n@SERVICE.task\ndef echo(',
        ),
    )
    code, lines = check(repo)
    assert code == 1, lines
    assert sorted(lines[:-1]) == sorted(
        [
            "BREAKING emails.notify_admin: new parameter 'level' without a default",
            "BREAKING emails.notify_admin: parameter 'data' type narrowed"
            " from AdminItem | int | list[AdminItem | int] to AdminItem",
            "BREAKING emails.send_welcome_email: parameter 'doctor_id' removed",
            "BREAKING payments.process_payment: parameter 'appointment_id' renamed to 'appointment_pk'",
            "BREAKING reports.generate_weekly_report: queue changed from reports to slow",
            "BREAKING sync.create_account: parameter 'data' type narrowed from DoctorCheck to int",
            "BREAKING sync.health_check: task removed (queue sync)",
        ]
    )
    assert lines[-1] == "contracts incompatible with HEAD: 7 breaking changes"


def test_reordered_parameters_and_lost_default_break(repo: Path) -> None:
    edit(repo, ("def echo(value: int)", "def echo(value: int = 0, extra: int = 1)"))
    subprocess.run(
        ["git", "-C", str(repo), "commit", "-qam", "echo grows"], check=True, env={**os.environ, **GIT_ENV}
    )
    edit(repo, ("def echo(value: int = 0, extra: int = 1)", "def echo(extra: int = 1, value: int = 2)"))
    edit(repo, ("large_report(report_id: int)", "large_report(report_id: int, *, x: int = 0)"))
    code, lines = check(repo)
    assert code == 1, lines
    assert lines == [
        "BREAKING sync.echo: parameter 'value' moved from position 1 to 2",
        "BREAKING sync.echo: parameter 'extra' moved from position 2 to 1",
        "contracts incompatible with HEAD: 2 breaking changes",
    ]
    # Against the commit before, only what was added since counts: `value` keeps no default.
    edit(repo, ("def echo(extra: int = 1, value: int = 2)", "def echo(value: int, extra: int = 1)"))
    code, lines = check(repo, "HEAD~1")
    assert code == 0, lines
    assert lines[0] == f"contracts compatible with HEAD~1: {declared(repo)} tasks, 2 additive changes"


def test_lost_default_and_unusable_refs(repo: Path) -> None:
    edit(repo, ("def generate_large_report(report_id: int)", "def generate_large_report(report_id: int = 0)"))
    subprocess.run(
        ["git", "-C", str(repo), "commit", "-qam", "default"], check=True, env={**os.environ, **GIT_ENV}
    )
    edit(repo, ("def generate_large_report(report_id: int = 0)", "def generate_large_report(report_id: int)"))
    code, lines = check(repo)
    want = "BREAKING reports.generate_large_report: parameter 'report_id' lost its default"
    assert (code, lines[0]) == (1, want)
    code, lines = check(repo, "no-such-ref")
    assert (code, lines) == (2, [f"check-contracts: 'no-such-ref' is not a commit in {repo.resolve()}"])


def test_payload_shapes_are_compared_field_by_field(repo: Path) -> None:
    edit(
        repo,
        # a new optional field: an older worker ignores it, so additive
        ("    email_sent: bool\n", "    email_sent: bool\n    site_id: int\n"),
        # a field removed, and a new required field
        ("    problems: list[str]\n\n\n@SERVICE.task", "    clinic_id: int\n\n\n@SERVICE.task"),
        # a field's type narrowed
        ("    external_id: NotRequired[str]\n", "    external_id: NotRequired[bool]\n"),
    )
    code, lines = check(repo)
    assert code == 1, lines
    assert sorted(lines[:-1]) == [
        "BREAKING emails.send_onboarding_email: parameter 'data': OnboardingStep field 'external_id'"
        " type narrowed from str to bool",
        "BREAKING sync.create_account: parameter 'data': DoctorCheck field 'problems' removed",
        "BREAKING sync.create_account: parameter 'data': DoctorCheck new required field 'clinic_id'",
    ], lines
    edit(repo, ("    clinic_id: int\n\n\n@SERVICE.task", "    problems: list[str]\n\n\n@SERVICE.task"))
    edit(repo, ("external_id: NotRequired[bool]", "external_id: NotRequired[str]"))
    code, lines = check(repo)
    assert code == 0, lines
    assert (
        "  additive emails.notify_admin: parameter 'data': AdminItem new optional field 'site_id'" in lines
    )


def test_a_deliberate_break_is_acknowledged_with_its_reason(repo: Path) -> None:
    edit(repo, ("def echo(value: int)", "def echo(value: bool)"))
    line = "sync.echo: parameter 'value' type narrowed from int to bool"
    assert check(repo) == (1, [f"BREAKING {line}", "contracts incompatible with HEAD: 1 breaking change"])
    acknowledged = repo / contracts_check.ACKNOWLEDGED
    acknowledged.write_text(f"{line}\n")
    code, lines = check(repo)
    assert code == 1 and "say why" in lines[-1], lines
    acknowledged.write_text(f"# deliberate\n{line}  # every producer sends booleans\n")
    code, lines = check(repo)
    assert (code, lines[0]) == (0, f"ACKNOWLEDGED {line}  (every producer sends booleans)"), lines


def test_reorganised_contracts_are_named(repo: Path) -> None:
    path = repo / "libs" / "contracts" / "declare.py"
    path.write_text(path.read_text().replace("def all_contracts", "def every_contract"))
    code, lines = check(repo)
    assert code == 2
    assert "cannot import the contracts" in lines[-1] and "all_contracts" in lines[-1], lines
    assert "the working tree" in lines[-1]

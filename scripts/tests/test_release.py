"""./scripts/release for real, in a scratch clone of this checkout: what changed, and one release.

Not run by `./pants test` (scripts/tests/BUILD): it runs Pants itself, in a git clone, which a
test sandbox is not. .ci/run runs it with the dev venv's pytest. The clone shares ~/.cache/pants
and gets a pantsd of its own (without one each of the ~9 Pants calls paid a 20 s start-up),
stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import release

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("emails", "monitor", "payments", "reports", "scheduler", "sync", "web")
BASE_VERSION = "1.0.0"
# The working copies of the script, copied over the clone of HEAD: the test tests these files.
RELEASE_FILES = ("scripts/release", "scripts/release.py")
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}

needs_checkout = pytest.mark.skipif(
    not (ROOT / ".git").exists() or shutil.which("git") is None, reason="needs this git checkout"
)


def sh(repo: Path, *cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def kill_pantsd(repo: Path) -> None:
    """Stop the clone's pantsd (its process title names the clone), and only that one."""
    marker = f"pantsd [{repo}]".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "cmdline").read_bytes().startswith(marker):
                os.kill(int(proc.name), signal.SIGTERM)
                pids.append(proc)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:  # before removing its files
        time.sleep(0.1)


def alive(proc: Path) -> bool:
    """Still running: a daemon's exit leaves a zombie until something reaps it."""
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clone of HEAD: every service tagged 1.0.0, then a commit changing reports only."""
    repo = tmp_path_factory.mktemp("release") / "repo"
    sh(ROOT, "git", "clone", "-q", str(ROOT), str(repo))
    try:
        for name in RELEASE_FILES:
            shutil.copy2(ROOT / name, repo / name)
        sh(repo, "git", "add", *RELEASE_FILES)
        sh(repo, "git", "commit", "-q", "--allow-empty", "-m", "base: the release script under test")
        # The dev venv is this checkout's (scripts/dev-venv would export another: a minute).
        venv = sh(ROOT, str(ROOT / "scripts" / "dev-venv")).stdout.strip()
        (repo / "dist").mkdir()
        (repo / "dist" / "export").symlink_to(ROOT / "dist" / "export")
        assert (repo / venv / "bin" / "python").exists()
        for service in SERVICES:
            sh(repo, "git", "tag", "-a", f"{service}@{BASE_VERSION}", "-m", "released")
        tasks = repo / "services" / "reports" / "tasks.py"
        tasks.write_text(tasks.read_text() + "\n# a change in reports only\n")
        sh(repo, "git", "commit", "-q", "-am", "reports: a comment")
        yield repo
    finally:
        kill_pantsd(repo)
        shutil.rmtree(repo, ignore_errors=True)


def release_cmd(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sh(repo, str(repo / "scripts" / "release"), *args, check=False)


@needs_checkout
def test_dry_run_lists_only_the_changed_service(scratch: Path) -> None:
    by_tag = release_cmd(scratch, "--dry-run")
    assert (by_tag.returncode, by_tag.stdout) == (0, "reports\n"), by_tag.stderr
    since = release_cmd(scratch, "--since", "HEAD~1", "--dry-run")
    assert (since.returncode, since.stdout) == (0, "reports\n"), since.stderr
    nothing = release_cmd(scratch, "--since", "HEAD", "--dry-run")
    assert (nothing.returncode, nothing.stdout) == (0, ""), nothing.stderr


@needs_checkout
def test_a_dirty_tree_is_refused(scratch: Path) -> None:
    stray = scratch / "services" / "reports" / "stray.txt"
    stray.write_text("not committed")
    try:
        proc = release_cmd(scratch, "--skip-tests")
    finally:
        stray.unlink()
    assert proc.returncode == 1
    assert "refused: the working tree has uncommitted changes" in proc.stderr
    assert sh(scratch, "git", "tag", "--list", "reports@1.0.1").stdout == ""


@needs_checkout
def test_release_writes_manifest_stamps_the_pex_and_tags(scratch: Path) -> None:
    proc = release_cmd(scratch, "--skip-tests")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == "reports@1.0.1\n"
    head = sh(scratch, "git", "rev-parse", "HEAD").stdout.strip()
    assert sh(scratch, "git", "rev-parse", "reports@1.0.1^{commit}").stdout.strip() == head
    assert sh(scratch, "git", "cat-file", "-t", "reports@1.0.1").stdout.strip() == "tag"  # annotated

    manifest = json.loads((scratch / "dist" / "releases" / "reports@1.0.1.json").read_text())
    pex = scratch / manifest.pop("pex")
    assert re.fullmatch(r"[0-9a-f]{12}", manifest.pop("contracts_version"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", manifest.pop("built_at"))
    assert manifest == {
        "service": "reports",
        "version": "1.0.1",
        "release": "reports@1.0.1",
        "git_sha": head,
        "dirty": False,
        "previous_release": "reports@1.0.0",
        "pex_sha256": release.sha256_file(pex),
    }
    assert release.frozen_env(pex)["JOBS_RELEASE"] == "reports@1.0.1"
    # Released: nothing has changed since any service's last tag.
    again = release_cmd(scratch, "--dry-run")
    assert (again.returncode, again.stdout) == (0, ""), again.stderr


@needs_checkout
def test_a_contract_change_releases_its_service_and_its_callers_not_everyone(scratch: Path) -> None:
    # Issue 9's measure: editing one service's contract (a docstring) once listed all seven.
    contract = scratch / "libs" / "contracts" / "payments.py"
    contract.write_text(contract.read_text().replace('"""Charge an appointment', '"""Charge one appointment'))
    sh(scratch, "git", "commit", "-q", "-am", "payments: a contract docstring")
    listed = sh(
        scratch,
        "./pants",
        "--changed-since=HEAD~1",
        "--changed-dependents=transitive",
        "--filter-target-type=pex_binary",
        "list",
    ).stdout.split()
    assert sorted(a.split(":")[-1] for a in listed) == ["payments", "web"], listed
    dry = release_cmd(scratch, "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "payments\nweb\n"), dry.stderr


def test_versions() -> None:
    assert release.next_version(None, grew=False) == "1.0.0"
    assert release.next_version("reports@1.4.2".partition("@")[2], grew=False) == "1.4.3"
    assert release.next_version("1.4.2", grew=True) == "1.5.0"


def test_contracts_version_and_growth_are_per_service() -> None:
    task = {"queue": "reports", "parameters": []}
    old = {"tasks": {"reports.a": task, "sync.b": {"queue": "sync", "parameters": []}}}
    grown = {"tasks": {**old["tasks"], "sync.c": {"queue": "sync", "parameters": []}}}
    assert release.contracts_grew(old, grown, "sync")
    assert not release.contracts_grew(old, grown, "reports")
    assert release.contracts_version(old, "reports") == release.contracts_version(grown, "reports")
    assert release.contracts_version(old, "sync") != release.contracts_version(grown, "sync")
    assert release.contracts_version(grown, "web") is None

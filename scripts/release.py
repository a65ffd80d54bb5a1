"""Release the deployables that changed: check, test, package, record and tag each one.

    ./scripts/release --dry-run                 # which services changed since their last release
    ./scripts/release --since REF --dry-run     # ... since REF instead
    ./scripts/release [--service NAME] [--version X.Y.Z] [--skip-tests] [--allow-dirty]

A deployable is a `pex_binary` (services/<name>:<name>); its releases are annotated git tags
`<name>@<version>`. "Changed" is Pants' answer (`--changed-since=REF
--changed-dependents=transitive`), so an edit in libs/common releases every service using it.
Without --since each service is compared with its own last tag (one Pants run per tagged
commit); a service with no tag was never released and is included.

A release: refuse a dirty tree; ./scripts/check-contracts against each base (a breaking
change refuses the release); `./pants test` the services' tests; `./pants package` with
JOBS_RELEASES set, which build-support/macros.py freezes into each pex as JOBS_RELEASE (what
Sentry and `celery inspect stats` report); dist/releases/<name>@<version>.{pex,json}; then the
tags. Versions: 1.0.0 first, a minor bump when the service's task contracts grew (a new task,
a new parameter with a default, a type widened), a patch bump otherwise.

Standard library only, like scripts/contracts_check.py, whose dumper it reuses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scripts import contracts_check

ROOT = Path(__file__).resolve().parent.parent
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
FIRST_VERSION = "1.0.0"


class ReleaseError(Exception):
    """The release is refused or cannot go on; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Plan:
    """One service to release: where it was last released and what it becomes."""

    service: str
    address: str
    previous: str | None  # the last tag `<service>@<version>`, None if never released
    base: str | None  # the ref "changed" and the contract check compare with
    version: str = ""

    @property
    def release(self) -> str:
        return f"{self.service}@{self.version}"


# --- git and pants -----------------------------------------------------------------------
def run(repo: Path, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command in `repo`; its output is captured (a failure is shown by the caller)."""
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)


def git(repo: Path, *args: str) -> str:
    proc = run(repo, "git", *args)
    if proc.returncode:
        raise ReleaseError(f"git {' '.join(args)}: {proc.stderr.strip()}", 2)
    return proc.stdout.strip()


def pants(repo: Path, *args: str, env: dict[str, str] | None = None, echo: bool = False) -> str:
    """`./pants ARGS`; stdout returned. With `echo`, its log goes to our stderr as it runs."""
    cmd = [str(repo / "pants"), *args]
    if echo:
        proc = subprocess.run(cmd, cwd=repo, stdout=subprocess.PIPE, text=True, env=env)
        err = ""
    else:
        proc = run(repo, *cmd, env=env)
        err = proc.stderr.strip()
    if proc.returncode:
        tail = "\n".join(err.splitlines()[-20:])
        raise ReleaseError(f"./pants {' '.join(args)} failed (exit {proc.returncode})\n{tail}".rstrip(), 2)
    return proc.stdout


def service_of(address: str) -> str:
    """`services/reports:reports` -> `reports` (a deployable's target is named after it)."""
    return address.rsplit(":", 1)[-1]


def deployables(repo: Path) -> dict[str, str]:
    """Every pex_binary, service name -> address."""
    out = pants(repo, "--filter-target-type=pex_binary", "list", "::")
    return {service_of(a): a for a in out.split()}


def changed_since(repo: Path, ref: str) -> set[str]:
    """The deployables Pants says changed since `ref`, dependents included."""
    out = pants(
        repo,
        f"--changed-since={ref}",
        "--changed-dependents=transitive",
        "--filter-target-type=pex_binary",
        "list",
    )
    return {service_of(a) for a in out.split()}


def parse_version(version: str) -> tuple[int, int, int]:
    m = SEMVER.match(version)
    if not m:
        raise ReleaseError(f"{version!r} is not a version X.Y.Z")
    major, minor, patch = (int(g) for g in m.groups())
    return major, minor, patch


def last_tag(repo: Path, service: str) -> str | None:
    """The highest `<service>@X.Y.Z` tag reachable from HEAD (a tag on another branch is not ours)."""
    tags = git(repo, "tag", "--list", "--merged", "HEAD", f"{service}@*").split()
    versions = [(parse_version(t.partition("@")[2]), t) for t in tags if SEMVER.match(t.partition("@")[2])]
    return max(versions)[1] if versions else None


def plan_changed(repo: Path, since: str | None, only: list[str]) -> list[Plan]:
    """The deployables to release, each with its previous tag and its base ref."""
    addresses = deployables(repo)
    unknown = sorted(set(only) - set(addresses))
    if unknown:
        known = ", ".join(sorted(addresses))
        raise ReleaseError(f"no such deployable: {', '.join(unknown)} (known: {known})")
    plans = [
        Plan(service, address, last_tag(repo, service), None)
        for service, address in sorted(addresses.items())
        if not only or service in only
    ]
    if since is not None:
        changed = changed_since(repo, since)
        for p in plans:
            p.base = since
        return [p for p in plans if p.service in changed]
    # One Pants run per released commit: services released together share it.
    by_commit: dict[str, list[Plan]] = {}
    for p in plans:
        if p.previous is not None:
            p.base = p.previous
            by_commit.setdefault(git(repo, "rev-parse", f"{p.previous}^{{commit}}"), []).append(p)
    changed = {p.service for p in plans if p.previous is None}
    for commit, group in by_commit.items():
        changed |= changed_since(repo, commit) & {p.service for p in group}
    return [p for p in plans if p.service in changed]


# --- contracts -----------------------------------------------------------------------------
def dump_contracts(repo: Path, ref: str | None) -> dict[str, Any]:
    """Every task contract at `ref` (None: the working tree), as scripts/contracts_check dumps it."""
    with tempfile.TemporaryDirectory(prefix="release-contracts-") as tmp:
        scratch = Path(tmp)
        (scratch / "data").mkdir()
        try:
            libs = repo / "libs" if ref is None else contracts_check.extract(repo, ref, scratch / "src")
            return contracts_check.finish_dump(
                contracts_check.start_dump(libs, scratch / "data"), ref or "the working tree"
            )
        except contracts_check.CheckError as exc:
            raise ReleaseError(f"cannot read the task contracts: {exc}", 2) from None


def service_contracts(dump: dict[str, Any], service: str) -> dict[str, Any]:
    """The tasks `service` owns (named `<service>.…`)."""
    return {"tasks": {k: v for k, v in dump["tasks"].items() if k.startswith(f"{service}.")}}


def contracts_version(dump: dict[str, Any], service: str) -> str | None:
    """First 12 hex of the sha256 of the service's contracts as canonical JSON; None if it owns no task."""
    own = service_contracts(dump, service)
    if not own["tasks"]:
        return None
    canonical = json.dumps(own, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def check_contracts(repo: Path, ref: str) -> None:
    """./scripts/check-contracts --against REF; a breaking change refuses the release."""
    proc = run(repo, str(repo / "scripts" / "check-contracts"), "--against", ref)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 1:
        raise ReleaseError(f"refused: task contracts break against {ref}\n{out}")
    if proc.returncode:
        why = f"could not check the task contracts against {ref} (exit {proc.returncode})\n{out}"
        raise ReleaseError(why, 2)


# --- versions ------------------------------------------------------------------------------
def next_version(previous: str | None, grew: bool) -> str:
    """1.0.0 first; minor bump when the service's contracts grew; patch bump otherwise."""
    if previous is None:
        return FIRST_VERSION
    major, minor, patch = parse_version(previous)
    return f"{major}.{minor + 1}.0" if grew else f"{major}.{minor}.{patch + 1}"


def contracts_grew(old: dict[str, Any], new: dict[str, Any], service: str) -> bool:
    """Whether `service`'s own contracts gained anything (breaking changes were refused before)."""
    _, additive = contracts_check.compare(service_contracts(old, service), service_contracts(new, service))
    return bool(additive)


def choose_versions(repo: Path, plans: list[Plan], new: dict[str, Any], override: str | None) -> None:
    old_dumps: dict[str, dict[str, Any]] = {}
    for p in plans:
        prev_version = p.previous.partition("@")[2] if p.previous else None
        if override is not None:
            if prev_version and parse_version(override) <= parse_version(prev_version):
                raise ReleaseError(f"--version {override} is not above {p.previous}")
            parse_version(override)
            p.version = override
            continue
        grew = False
        if p.previous is not None:
            if p.previous not in old_dumps:
                old_dumps[p.previous] = dump_contracts(repo, p.previous)
            grew = contracts_grew(old_dumps[p.previous], new, p.service)
        p.version = next_version(prev_version, grew)


# --- packaging -----------------------------------------------------------------------------
def frozen_env(pex: Path) -> dict[str, str]:
    """The environment frozen into a pex (PEX-INFO `inject_env`)."""
    with zipfile.ZipFile(pex) as z:
        return dict(json.loads(z.read("PEX-INFO")).get("inject_env", {}))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package(repo: Path, plans: list[Plan]) -> dict[str, Path]:
    """`./pants package` with each version stamped; service -> its pex under dist/."""
    env = {**os.environ, "JOBS_RELEASES": " ".join(p.release for p in plans)}
    pants(repo, "package", *(p.address for p in plans), env=env, echo=True)
    pexes = {}
    for p in plans:
        spec_path = p.address.split(":")[0]
        pex = repo / "dist" / spec_path.replace("/", ".") / f"{p.service}.pex"
        if not pex.is_file():
            raise ReleaseError(f"./pants package wrote no {pex.relative_to(repo)}", 2)
        stamped = frozen_env(pex).get("JOBS_RELEASE")
        if stamped != p.release:  # a stale pex from Pants' cache would be a wrong release
            raise ReleaseError(f"{pex.relative_to(repo)} has JOBS_RELEASE={stamped!r}, not {p.release!r}", 2)
        pexes[p.service] = pex
    return pexes


def write_manifest(repo: Path, p: Plan, built: Path, sha: str, dirty: bool, contracts: str | None) -> Path:
    """dist/releases/<release>.json beside a copy of its pex (Pants overwrites its own path next build)."""
    out = repo / "dist" / "releases"
    out.mkdir(parents=True, exist_ok=True)
    pex = out / f"{p.release}.pex"
    shutil.copy2(built, pex)
    manifest = {
        "service": p.service,
        "version": p.version,
        "release": p.release,
        "git_sha": sha,
        "dirty": dirty,  # built with --allow-dirty from uncommitted changes: not exactly git_sha
        "previous_release": p.previous,
        "pex": str(pex.relative_to(repo)),
        "pex_sha256": sha256_file(pex),
        "contracts_version": contracts,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = out / f"{p.release}.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


# --- the pipeline ----------------------------------------------------------------------------
def refuse_dirty(repo: Path) -> None:
    """A release is exactly a commit: its tag, manifest sha and pex must agree."""
    dirty = git(repo, "status", "--porcelain", "--untracked-files=normal")
    if dirty:
        raise ReleaseError(
            "refused: the working tree has uncommitted changes; a release must be exactly a "
            "commit (commit or stash them, or pass --allow-dirty for a local try)\n" + dirty
        )


def release(repo: Path, plans: list[Plan], opts: argparse.Namespace) -> None:
    """Check, test, package, record and tag `plans`; nothing is tagged unless all were built."""
    if opts.version and len(plans) != 1:
        names = ", ".join(p.service for p in plans)
        raise ReleaseError(f"--version needs exactly one service to release, not: {names} (use --service)")
    for base in sorted({p.base for p in plans if p.base is not None}):
        check_contracts(repo, base)
    new = dump_contracts(repo, None)
    choose_versions(repo, plans, new, opts.version)
    existing = [p.release for p in plans if git(repo, "tag", "--list", p.release)]
    if existing:
        raise ReleaseError(f"refused: already tagged: {', '.join(existing)}")
    say("releasing " + ", ".join(f"{p.release} (was {p.previous or 'never released'})" for p in plans))
    if not opts.skip_tests:
        dirs = [f"services/{p.service}/tests" for p in plans]
        tests = [f"{d}::" for d in dirs if (repo / d).is_dir()]
        if tests:
            say("testing " + " ".join(tests))
            pants(repo, "test", *tests, echo=True)
    pexes = package(repo, plans)
    sha = git(repo, "rev-parse", "HEAD")
    dirty = bool(git(repo, "status", "--porcelain", "--untracked-files=normal"))
    for p in plans:
        manifest = write_manifest(repo, p, pexes[p.service], sha, dirty, contracts_version(new, p.service))
        say(f"wrote {manifest.relative_to(repo)}")
    for p in plans:
        message = f"Release {p.release} (previous: {p.previous or 'none'})"
        git(repo, "tag", "-a", p.release, "-m", message, "HEAD")
        print(p.release)


def say(message: str) -> None:
    print(f"[release] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--since", metavar="REF", help="changed since REF (default: each service's last tag)")
    parser.add_argument("--dry-run", action="store_true", help="print the changed services, one a line")
    parser.add_argument("--service", action="append", default=[], help="only this service (repeatable)")
    parser.add_argument("--version", help="the version to release (exactly one service)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the services' tests")
    parser.add_argument("--allow-dirty", action="store_true", help="release from uncommitted changes")
    parser.add_argument("--repo", type=Path, default=ROOT, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    repo = opts.repo.resolve()
    try:
        if opts.version:
            parse_version(opts.version)
        if not opts.dry_run and not opts.allow_dirty:
            refuse_dirty(repo)
        plans = plan_changed(repo, opts.since, opts.service)
        if opts.dry_run:
            for p in plans:
                print(p.service)
            return 0
        if not plans:
            say("nothing changed: nothing to release")
            return 0
        release(repo, plans, opts)
    except ReleaseError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())

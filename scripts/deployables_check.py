"""Check what each deployable carries: its own contracts' callers only, and no dev tooling.

    ./scripts/check-deployables

1. No pex_binary depends, however indirectly, on development tooling (`libs/devtools`: the
   sandboxes, the local redis-server, the pytest plugin) or on tests, scripts or the bench.
2. Editing one service's contract rebuilds that service and its callers only:

For each `libs/contracts/<service>.py`, Pants lists the deployables that depend on it
transitively (what `--changed-since=REF --changed-dependents=transitive` would release
after editing it). That set must be exactly the owning service plus the deployables whose
own sources name the contract (`contracts.<service>`, `from contracts import <service>`,
or every contract through `libs/contracts:all`), and never every deployable. It fails when
the shared library starts importing a contract, or a service reaches another's contract
by some path its sources do not show.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "libs" / "contracts"


def deployables() -> dict[str, str]:
    """Every pex_binary: its address -> its directory (services/<dir>)."""
    return {
        address: address.split(":")[0] for address in pants("--filter-target-type=pex_binary", "list", "::")
    }


def rebuilt_by(module: Path, where: dict[str, str]) -> set[str]:
    """The deployables depending on `module` (Pants' filter applies to inputs, not to dependents)."""
    dependents = pants("dependents", "--transitive", str(module.relative_to(ROOT)))
    return {short(address) for address in dependents if address in where}


def short(address: str) -> str:
    return address.split(":")[-1]


def callers(service: str, where: dict[str, str]) -> set[str]:
    """Deployables whose own sources or BUILD files name `contracts.<service>` (or all contracts)."""
    named = re.compile(
        rf"contracts\.{service}\b|from contracts import [^\n]*\b{service}\b|libs/contracts:all"
    )
    found = set()
    for name, directory in where.items():
        files = [p for p in (ROOT / directory).rglob("*") if p.suffix == ".py" or p.name == "BUILD"]
        if any(named.search(p.read_text()) for p in files if "tests" not in p.relative_to(ROOT).parts):
            found.add(short(name))
    return found


def pants(*args: str) -> list[str]:
    proc = subprocess.run(["./pants", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"check-deployables: ./pants {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


DEV_ONLY = ("libs/devtools/", "tests/", "scripts/", "bench/")


def carried_dev_tooling(where: dict[str, str]) -> list[str]:
    """One line per deployable that depends on development tooling, naming what it pulls in."""
    lines = []
    for address in sorted(where):
        deps = pants("dependencies", "--transitive", address)
        dev = sorted(d for d in deps if d.startswith(DEV_ONLY) or "/tests/" in d or "/tests:" in d)
        if dev:
            lines.append(f"{address} carries development tooling: {', '.join(dev[:5])}")
        else:
            print(f"{short(address)}: {len(deps)} dependencies, no development tooling")
    return lines


def main() -> int:
    where = deployables()
    failures = carried_dev_tooling(where)
    services = sorted(p.stem for p in CONTRACTS.glob("*.py") if p.stem not in ("__init__", "declare"))
    for service in services:
        got = rebuilt_by(CONTRACTS / f"{service}.py", where)
        want = {service} | callers(service, where)
        print(f"contracts/{service}.py -> {', '.join(sorted(got))}")
        if got == {short(a) for a in where}:
            failures.append(f"editing contracts/{service}.py rebuilds every deployable")
        if got != want:
            extra, missing = sorted(got - want), sorted(want - got)
            failures.append(
                f"contracts/{service}.py: Pants rebuilds {sorted(got)}; the sources name {sorted(want)}"
                + (f" ({', '.join(extra)} depend on it by a path their sources do not show)" if extra else "")
                + (f" ({', '.join(missing)} name it but Pants does not see it)" if missing else "")
            )
    for line in failures:
        print(f"FAIL {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

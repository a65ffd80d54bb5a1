"""Celery's own integration suite on stock kombu + Celery's Redis backend, and on ours.

    ./scripts/celery-compat [--quick] [--parallel] [--reruns N] [--rerun-scope selection|alone]
                            [--test-timeout S] [--run-timeout S] [-k EXPR] [--only stock|ours] [TEST_ID...]

Fetches Celery's sdist of exactly the version the locked virtualenv holds (`pip download
--no-binary :all:`, cached in $CELERY_COMPAT_CACHE or ~/.cache/celery-compat and reused),
extracts its `t/integration` with the `t/` helpers it imports, and runs it twice, one run
after the other (`--parallel`: at the same time), each against a throwaway redis-server of
its own (`devtools.local_redis`): "stock" (kombu's Redis transport, Celery's Redis backend) and
"ours" (`common.transport.broker` and `common.transport.results`, switched on by the pytest
plugin `scripts.celery_compat_ours`). Outcomes are read per test id from each run's JUnit
XML; the summary gives each run's totals and the tests whose outcome differs.

A test that passed on stock and failed on ours is confirmed on ours `--reruns` times: the
whole selection again with `--quick` (a failure caused by an earlier test's leftovers comes
back), the suspects alone otherwise (`--rerun-scope`). One that passes in any rerun is reported
as flaky on ours; one that fails every time is a difference. Exit 1 when a difference is not listed in
`scripts/celery_compat_known.txt` (`<test id>  # why`, one a line; an id without its
`[parameters]` covers them all), 2 when the suite could not run, 0 otherwise.

`--quick` runs the subset CI runs: connection recovery (test_connection_recovery.py, when the
version has it), the reject/requeue tests, the Redis result backend's subscription tests
(test_redis_backend.py and test_tasks.py's test_task_redis_result_backend) and
test_inspect.py. Without it, the whole suite.

Bounded: each test has `--test-timeout` seconds (setup and teardown included; SIGALRM in
pytest's main thread, as pytest-timeout's signal method, which the locked environment lacks;
the suite's own `timeout` markers are honoured when shorter), and each run `--run-timeout`
seconds, after which its process group is killed and the outcomes recorded so far are used.

This module is also the pytest plugin both runs load (`-p scripts.celery_compat`): the
per-test timeout, and each outcome appended to a JSON-lines file as it happens, read when a
killed run left no JUnit XML.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import pytest

ROOT = Path(__file__).resolve().parent.parent
KNOWN_FILE = ROOT / "scripts" / "celery_compat_known.txt"
OUT_DIR = ROOT / "dist" / "celery-compat"
SUITE = "t/integration"

# The subset `--quick` runs, relative to t/integration; a file the version lacks is left out.
QUICK = (
    "test_connection_recovery.py",
    "test_tasks.py::test_tasks::test_reject_without_requeue_stores_failure",
    "test_tasks.py::test_tasks::test_reject_with_requeue_redelivers_and_succeeds",
    "test_tasks.py::test_task_redis_result_backend",
    "test_redis_backend.py",
    "test_inspect.py",
)

PASSED, FAILED, SKIPPED, MISSING = "passed", "failed", "skipped", "missing"


# --- the pytest plugin both runs load --------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--compat-test-timeout", type=float, default=0.0, help="seconds per test (0: none)")


def _timeout_for(item: pytest.Item) -> float:
    seconds = float(item.config.getoption("--compat-test-timeout") or 0)
    marker = item.get_closest_marker("timeout")  # the suite's own, for pytest-timeout
    if marker is not None:
        own = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
        if own and (not seconds or float(own) < seconds):
            seconds = float(own)
    return seconds


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Arm the per-test alarm around setup, call and teardown (pytest-timeout's signal method)."""
    seconds = _timeout_for(item)
    if not seconds:
        return (yield)

    def on_alarm(signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        # Every thread's stack, for the log: what the test (or the worker) was stuck in.
        sys.stderr.write(f"\n+++ celery-compat: {item.nodeid} over {seconds:g} s; stacks:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        pytest.fail(f"Timeout: over {seconds:g} s (celery-compat per-test timeout)", pytrace=False)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _record(nodeid: str, when: str, outcome: str) -> None:
    path = os.environ.get("CELERY_COMPAT_OUTCOMES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"nodeid": nodeid, "when": when, "outcome": outcome}) + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    outcome: str = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = SKIPPED if report.skipped else FAILED  # an xfail, or a strict xpass (as JUnit)
    _record(report.nodeid, report.when, outcome)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _record(report.nodeid, "collect", FAILED)


# --- fetching the suite ----------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("CELERY_COMPAT_CACHE") or Path.home() / ".cache" / "celery-compat")


def fetch_suite(version: str) -> Path:
    """The extracted suite of Celery `version` (a directory holding `t/` and pyproject.toml)."""
    cache = cache_dir()
    suite = cache / f"celery-{version}-suite"
    if (suite / ".complete").exists():
        return suite
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"celery-{version}.tar.gz"
    if not sdist.exists():
        print(f"[celery-compat] downloading Celery {version}'s sdist into {cache}", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            + [f"celery=={version}", "--dest", str(cache)],
            check=True,
        )
    shutil.rmtree(suite, ignore_errors=True)
    prefix = f"celery-{version}/"
    # t/integration and the t/ helpers it imports (t/__init__.py, t/canvas_helpers.py, t/skip.py),
    # and pyproject.toml for the suite's pytest settings (python_classes, markers, xfail_strict).
    wanted = re.compile(rf"^{re.escape(prefix)}(pyproject\.toml|t/[^/]+\.py|t/integration/.*)$")
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if wanted.match(m.name) and (m.isfile() or m.isdir())]
        if not any(m.name.startswith(prefix + SUITE + "/") for m in members):
            raise SystemExit(f"[celery-compat] {sdist} holds no {SUITE}")
        for member in members:
            member.name = member.name[len(prefix) :]
        archive.extractall(suite, members=members, filter="data")
    (suite / ".complete").write_text(version + "\n")
    return suite


def quick_targets(suite: Path) -> list[str]:
    targets = []
    for test_id in QUICK:
        if (suite / SUITE / test_id.split("::")[0]).exists():
            targets.append(f"{SUITE}/{test_id}")
    return targets


# --- running -----------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    outcomes: dict[str, str] = field(default_factory=dict)  # test id -> passed/failed/skipped
    messages: dict[str, str] = field(default_factory=dict)  # test id -> first line of its failure
    seconds: float = 0.0
    log: Path | None = None
    status: str = ""  # "" completed; otherwise why the run is incomplete

    def totals(self) -> str:
        counts = {PASSED: 0, FAILED: 0, SKIPPED: 0}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return f"{counts[PASSED]} passed, {counts[FAILED]} failed, {counts[SKIPPED]} skipped"


def junit_test_id(classname: str, name: str) -> str:
    """`test_tasks.py::test_tasks::test_x` from JUnit's classname `t.integration.test_tasks.test_tasks`."""
    parts = classname.split(".") if classname else name.split(".")
    if parts[:2] == ["t", "integration"]:
        parts = parts[2:]
    if not parts:
        return name
    module, rest = parts[0], parts[1:]
    if not classname:  # a collection error: the module alone
        return f"{module}.py"
    return "::".join([f"{module}.py", *rest, name])


def read_junit(path: Path, run: Run) -> None:
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = junit_test_id(case.get("classname", ""), case.get("name", ""))
        outcome, message = PASSED, ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = FAILED, child.get("message", "") or (child.text or "")
                break
            if child.tag == "skipped":
                outcome, message = SKIPPED, child.get("message", "")
        # A test failing in its call and again in teardown is listed twice: the worst wins.
        if run.outcomes.get(tid) != FAILED:
            run.outcomes[tid] = outcome
            if message.strip():
                run.messages[tid] = message.strip().splitlines()[0][:300]


def read_outcomes_log(path: Path, run: Run) -> None:
    """Outcomes from the plugin's JSON lines, for a run killed before it wrote its JUnit XML.

    A test failed if any of its phases failed, was skipped if a phase was, and passed if its
    call passed; a test still running when the run was killed has no outcome (missing).
    """
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        tid = entry["nodeid"].removeprefix(SUITE + "/")
        outcome, current = entry["outcome"], run.outcomes.get(tid)
        if outcome == FAILED or (outcome == SKIPPED and current != FAILED) or current is None:
            if outcome != PASSED or entry["when"] == "call":
                run.outcomes[tid] = outcome


def run_suite(
    name: str, suite: Path, targets: list[str], args: argparse.Namespace, out: Path, *, tag: str = ""
) -> Run:
    from devtools.local_redis import LocalRedis

    label = f"{name}{tag}"
    run = Run(name, log=out / f"{label}.log")
    junit, outcomes = out / f"{label}.xml", out / f"{label}.jsonl"
    for stale in (junit, outcomes):
        stale.unlink(missing_ok=True)
    ours = name == "ours"
    venv_bin = str(Path(sys.executable).parent)
    with LocalRedis() as redis:
        url = f"redis://127.0.0.1:{redis.port}/0"
        paths = [str(suite), str(ROOT)]
        if ours:
            site = out / "site-ours"
            site.mkdir(exist_ok=True)
            # Every Python process the run starts (the suite's `celery worker` subprocesses too)
            # uses ours; the pytest process itself also gets it through `-p` below.
            (site / "sitecustomize.py").write_text(
                "import scripts.celery_compat_ours\n\nscripts.celery_compat_ours.activate()\n"
            )
            paths = [str(site), str(suite), str(ROOT / "libs"), str(ROOT)]
        env = {
            **os.environ,
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": os.pathsep.join(paths),
            "TEST_BROKER": url,
            "TEST_BACKEND": url,
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(redis.port),
            "CELERY_COMPAT_OUTCOMES": str(outcomes),
            "PYTHONFAULTHANDLER": "1",
        }
        env.pop("PYTEST_ADDOPTS", None)
        command = [
            sys.executable,
            "-m",
            "pytest",
            *targets,
            # Celery's fixtures, which pytest-celery (not in the locked environment) would load.
            "-p",
            "celery.contrib.pytest",
            "-p",
            "scripts.celery_compat",
            *(["-p", "scripts.celery_compat_ours"] if ours else []),
            "-p",
            "no:cacheprovider",
            f"--compat-test-timeout={args.test_timeout}",
            f"--junitxml={junit}",
            "--continue-on-collection-errors",
            "-q",
            "-rfE",
            *(["-k", args.k] if args.k else []),
        ]
        started = time.monotonic()
        print(
            f"[celery-compat] {label}: {len(targets)} target(s), redis on port {redis.port}", file=sys.stderr
        )
        with open(cast(Path, run.log), "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                command, cwd=suite, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                proc.wait(timeout=args.run_timeout)
            except subprocess.TimeoutExpired:
                run.status = f"killed after {args.run_timeout:g} s (--run-timeout)"
                _kill_group(proc)
            except BaseException:
                _kill_group(proc)
                raise
            _kill_group(proc)  # what the run left behind (prefork children, subprocess workers)
        run.seconds = time.monotonic() - started
    if junit.exists():
        read_junit(junit, run)
    else:
        run.status = run.status or f"no JUnit XML (pytest exited {proc.returncode})"
        read_outcomes_log(outcomes, run)
    if proc.returncode not in (0, 1) and not run.status:
        run.status = f"pytest exited {proc.returncode}"
    status = f"; {run.status}" if run.status else ""
    print(f"[celery-compat] {label}: {run.totals()} in {run.seconds:.0f} s{status}", file=sys.stderr)
    return run


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# --- comparing ---------------------------------------------------------------------------------


def read_known(path: Path) -> dict[str, str]:
    """`<test id>  # why` per line -> {test id: why}; a line without its reason is an error."""
    known: dict[str, str] = {}
    if not path.exists():
        return known
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tid, _, why = line.partition("#")
        if not tid.strip() or not why.strip():
            raise SystemExit(f"{path}:{number}: expected `<test id>  # why`, got {line!r}")
        known[tid.strip()] = why.strip()
    return known


def known_reason(tid: str, known: dict[str, str]) -> str | None:
    """Why `tid` is a known difference (listed itself, or without its parameters), else None."""
    for key in (tid, tid.split("[", 1)[0]):
        if key in known:
            return known[key]
    return None


def is_regression(stock: str | None, ours: str | None) -> bool:
    return stock == PASSED and ours in (FAILED, MISSING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="the CI subset (see the module docstring)")
    parser.add_argument(
        "--reruns", type=int, default=None, help="reruns on ours to confirm (1 quick, 2 full)"
    )
    parser.add_argument(
        "--rerun-scope",
        choices=("selection", "alone"),
        default=None,
        help="rerun the whole selection (default with --quick) or the suspects alone (default otherwise)",
    )
    parser.add_argument(
        "--test-timeout", type=float, default=None, help="seconds per test (60 quick, 300 full)"
    )
    parser.add_argument(
        "--run-timeout", type=float, default=None, help="seconds per run (300 quick, 1800 full)"
    )
    parser.add_argument("--only", choices=("stock", "ours"), help="run one side alone (no comparison)")
    parser.add_argument(
        "--parallel", action="store_true", help="run stock and ours at the same time (twice the load)"
    )
    parser.add_argument("-k", help="pytest -k expression, to narrow either selection")
    parser.add_argument(
        "tests", nargs="*", help="test ids relative to t/integration (instead of a selection)"
    )
    args = parser.parse_args(argv)
    # The full suite has tests that take two minutes here (test_backend_leak_in_fixture_teardown:
    # 20 workers started and stopped), and an interrupted test can leave the process's Celery
    # state broken for every later test: 300 s, as the suite's own `timeout` markers.
    args.test_timeout = args.test_timeout or (60.0 if args.quick else 300.0)
    args.run_timeout = args.run_timeout or (300.0 if args.quick else 1800.0)
    args.reruns = (1 if args.quick else 2) if args.reruns is None else args.reruns
    args.rerun_scope = args.rerun_scope or ("selection" if args.quick else "alone")

    version = metadata.version("celery")
    known = read_known(KNOWN_FILE)
    try:
        suite = fetch_suite(version)
    except (subprocess.CalledProcessError, OSError, tarfile.TarError) as exc:
        print(f"[celery-compat] could not fetch Celery {version}'s suite: {exc}", file=sys.stderr)
        return 2
    if args.tests:
        targets = [f"{SUITE}/{t}" for t in args.tests]
    else:
        targets = quick_targets(suite) if args.quick else [SUITE]
    out = OUT_DIR / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    sides = [args.only] if args.only else ["stock", "ours"]
    if args.parallel and len(sides) > 1:
        with ThreadPoolExecutor(len(sides)) as pool:
            futures = {name: pool.submit(run_suite, name, suite, targets, args, out) for name in sides}
            runs = {name: future.result() for name, future in futures.items()}
    else:
        runs = {name: run_suite(name, suite, targets, args, out) for name in sides}
    if args.only:
        run = runs[args.only]
        print(f"{args.only}: {run.totals()} ({run.seconds:.0f} s; log {run.log})")
        return 0 if not run.status else 2
    stock, ours = runs["stock"], runs["ours"]

    # Confirm each unexplained stock-pass/ours-fail on ours, `--reruns` times: the same selection
    # again (a failure caused by an earlier test, as a process-wide state left behind, comes
    # back), or the suspects alone (`--rerun-scope alone`, the default for the full suite).
    suspects = sorted(
        t for t in stock.outcomes if is_regression(stock.outcomes[t], ours.outcomes.get(t, MISSING))
    )
    to_confirm = [t for t in suspects if known_reason(t, known) is None]
    rerun_passes: dict[str, int] = {t: 0 for t in to_confirm}
    for number in range(1, args.reruns + 1):
        if not to_confirm:
            break
        scope = targets if args.rerun_scope == "selection" else [f"{SUITE}/{t}" for t in to_confirm]
        rerun = run_suite("ours", suite, scope, args, out, tag=f"-rerun{number}")
        for t in to_confirm:
            if rerun.outcomes.get(t) == PASSED:
                rerun_passes[t] += 1

    return report(version, args, stock, ours, known, suspects, rerun_passes, time.monotonic() - started)


def report(
    version: str,
    args: argparse.Namespace,
    stock: Run,
    ours: Run,
    known: dict[str, str],
    suspects: list[str],
    rerun_passes: dict[str, int],
    seconds: float,
) -> int:
    from scripts.celery_compat_ours import SUBSCRIBE_ON_SEND_TESTS

    selection = "quick subset" if args.quick else "full suite"
    if args.tests or args.k:
        selection = "selected tests"
    print(f"\nCelery {version} integration suite ({selection}): stock vs ours, {seconds:.0f} s in all")
    for run in (stock, ours):
        status = f"; INCOMPLETE: {run.status}" if run.status else ""
        print(f"  {run.name + ':':6} {run.totals()}  ({run.seconds:.0f} s; log {_rel(run.log)}){status}")

    ids = sorted(set(stock.outcomes) | set(ours.outcomes))
    unexplained: list[str] = []
    lines: list[str] = []
    flaky: list[str] = []
    for t in suspects:
        if rerun_passes.get(t):
            flaky.append(t)
            continue
        why = known_reason(t, known)
        if why is None:
            unexplained.append(t)
        mark = f"known: {why}" if why else "NOT KNOWN"
        reruns = (
            f"; failed {args.reruns} rerun(s) ({args.rerun_scope}) too" if args.reruns and not why else ""
        )
        lines.append(f"  {t}  [{mark}{reruns}]")
        message = ours.messages.get(t) or ("no outcome (run incomplete)" if t not in ours.outcomes else "")
        if message:
            lines.append(f"      ours: {message}")
    print(f"\nPassed on stock, failed on ours ({len(suspects) - len(flaky)}):")
    print("\n".join(lines) if lines else "  none")
    if flaky:
        scope = "of the same selection" if args.rerun_scope == "selection" else "alone (may depend on order)"
        print(f"\nFlaky on ours: failed in the run, passed in a rerun {scope} ({len(flaky)}):")
        for t in flaky:
            print(f"  {t}  (passed {rerun_passes[t]} of {args.reruns}); ours: {ours.messages.get(t, '')}")

    reverse = [t for t in ids if ours.outcomes.get(t) == PASSED and stock.outcomes.get(t, MISSING) != PASSED]
    print(f"\nFailed on stock, passed on ours ({len(reverse)}):")
    for t in reverse:
        print(f"  {t}  (stock: {stock.outcomes.get(t, MISSING)}; {stock.messages.get(t, '')})")
    if not reverse:
        print("  none")

    others = [
        t
        for t in ids
        if stock.outcomes.get(t, MISSING) != ours.outcomes.get(t, MISSING)
        and t not in suspects
        and t not in reverse
    ]
    if others:
        print(f"\nOther differences ({len(others)}):")
        for t in others:
            print(f"  {t}: stock {stock.outcomes.get(t, MISSING)}, ours {ours.outcomes.get(t, MISSING)}")

    both_failed = [t for t in ids if stock.outcomes.get(t) == FAILED and ours.outcomes.get(t) == FAILED]
    if both_failed:
        print(f"\nFailed on both ({len(both_failed)}; not a difference):")
        for t in both_failed:
            print(f"  {t}: {stock.messages.get(t, '')}")

    adjusted = [t for t in SUBSCRIBE_ON_SEND_TESTS if t in ours.outcomes]
    if adjusted:
        print("\nRun on ours with subscribe_on_send=True (scripts/celery_compat_ours.py):")
        for t in adjusted:
            print(f"  {t}")
    confirmed = [t for t in suspects if t not in flaky]
    ran = {t.split("[", 1)[0] for t in ids}
    stale = [
        k
        for k in known
        if k.split("[", 1)[0] in ran and not any(known_reason(t, {k: ""}) is not None for t in confirmed)
    ]
    if stale:
        print("\nKnown differences that did not differ in this run:")
        for k in stale:
            print(f"  {k}")

    incomplete = [r.name for r in (stock, ours) if r.status]
    if incomplete:
        print(f"\nFAIL: incomplete run(s): {', '.join(incomplete)}")
        return 2
    if unexplained:
        print(f"\nFAIL: {len(unexplained)} test(s) pass on stock and fail on ours, not in {_rel(KNOWN_FILE)}")
        return 1
    print("\nOK: no unexplained difference")
    return 0


def _rel(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())

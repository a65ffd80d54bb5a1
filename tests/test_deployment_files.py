"""docker-compose.yml stays consistent with the code and the README (Docker does not run here)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from common.routing import SERVICES

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def pex_of(service: dict) -> str:
    return service["build"]["args"]["PEX"]


def test_compose_has_one_container_per_worker_service_built_from_its_own_pex() -> None:
    services = compose()["services"]
    for name in SERVICES:
        assert pex_of(services[name]) == f"services.{name}/{name}.pex"
        assert services[name]["stop_signal"] == "SIGTERM", "warm shutdown lets running tasks finish"


def test_exactly_one_beat_and_the_rest_of_the_platform() -> None:
    services = compose()["services"]
    beats = [n for n, s in services.items() if "build" in s and "scheduler" in pex_of(s)]
    assert beats == ["beat"] and services["beat"]["deploy"]["replicas"] == 1
    assert {"web", "flower", "redis", "postgres", "migrate"} <= set(services)


def test_secrets_come_from_the_environment_never_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    flower_env = compose()["services"]["flower"]["environment"]
    assert flower_env["FLOWER_PASSWORD"] == "${FLOWER_PASSWORD:?set FLOWER_PASSWORD}"
    for secret in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD"):
        assert re.search(rf"\$\{{{secret}:\?", text), f"{secret} must be required from the environment"


def test_every_pex_named_in_compose_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, service in compose()["services"].items():
        if "build" in service:
            assert f"dist/{pex_of(service)}" in readme, f"{name}: {pex_of(service)} is not in the README"


def units() -> dict[str, configparser.ConfigParser]:
    parsed = {}
    for path in sorted((ROOT / "deploy" / "systemd").glob("*.service")):
        parser = configparser.ConfigParser(strict=True, interpolation=None)
        parser.optionxform = str  # keys are case-sensitive in systemd
        parser.read(path)
        parsed[path.name] = parser
    return parsed


def test_systemd_units_run_each_deployable_in_the_foreground_and_stop_gracefully() -> None:
    found = units()
    assert set(found) == {
        "jobs-worker@.service",
        "jobs-beat.service",
        "jobs-flower.service",
        "jobs-web.service",
        "jobs-outbox-relay.service",
    }
    worker = found["jobs-worker@.service"]["Service"]
    assert worker["ExecStart"] == "/opt/jobs/%i.pex"  # one instance per queue service
    assert worker["KillSignal"] == "SIGTERM"  # Celery's warm shutdown
    assert int(worker["TimeoutStopSec"]) > 600, "must outlast the task hard time limit"
    for name, unit in found.items():
        service = unit["Service"]
        assert service["Type"] == "simple", f"{name}: processes run in the foreground"
        assert service["Restart"] == "always" and service["EnvironmentFile"] == "/etc/jobs/jobs.env"
        assert service["User"] != "root"
        assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert found["jobs-beat.service"]["Service"]["ExecStart"] == "/opt/jobs/scheduler.pex"


# Every unit's sandbox (systemd.exec(5)): the keys a review asks for, with their values.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/jobs",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictSUIDSGID": "yes",
    "RestrictRealtime": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "UMask": "0027",
}


def test_every_systemd_unit_is_sandboxed() -> None:
    for name, unit in units().items():
        service = unit["Service"]
        missing = {key: value for key, value in HARDENING.items() if service.get(key) != value}
        assert not missing, f"{name}: hardening missing or different: {missing}"
        # ProtectSystem=strict: the only writable place is the data directory, which holds the
        # working directory (DATA_DIR defaults to ./var there) and the pex's PEX_ROOT.
        assert service["WorkingDirectory"].startswith(service["ReadWritePaths"])
        assert service["Environment"] == "PEX_ROOT=/var/lib/jobs/.pex"
        assert service["User"] == "jobs"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_rates_every_unit_ok_or_better() -> None:
    for path in sorted((ROOT / "deploy" / "systemd").glob("*.service")):
        out = subprocess.run(
            # --threshold is in tenths: above 2.0 ("OK" ends at 3.9) the command fails.
            ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "--offline" in out.stderr and "unrecognized" in out.stderr:
            pytest.skip("this systemd-analyze has no --offline (systemd < 252)")
        verdict = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
        assert out.returncode == 0 and verdict, out.stdout[-2000:] + out.stderr
        assert float(verdict.group(1)) <= 2.0, f"{path.name}: exposure {verdict.group(1)}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "systemd").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "systemd" / "system").symlink_to("/usr/lib/systemd/system")
    (tmp_path / "opt" / "jobs").mkdir(parents=True)
    for pex in ("emails", "scheduler", "monitor", "web"):
        stub = tmp_path / "opt" / "jobs" / f"{pex}.pex"
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    for path in (ROOT / "deploy" / "systemd").glob("*.service"):
        shutil.copy(path, unit_dir / path.name)
    (unit_dir / "jobs-worker@emails.service").symlink_to("jobs-worker@.service")
    names = [
        "jobs-worker@emails.service",
        "jobs-beat.service",
        "jobs-flower.service",
        "jobs-web.service",
        "jobs-outbox-relay.service",
    ]
    out = subprocess.run(
        ["systemd-analyze", "verify", f"--root={tmp_path}", *names],
        cwd=unit_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if "jobs-" in line]
    assert out.returncode == 0 and not complaints, complaints


def test_each_worker_container_is_health_checked_by_its_own_liveness_probe() -> None:
    services = compose()["services"]
    for name in SERVICES:
        assert services[name]["healthcheck"]["test"] == [
            "CMD",
            "/app/venv/bin/python",
            "-m",
            "common.liveness",
            name,
        ]


def test_the_outbox_relay_runs_everywhere_the_platform_runs() -> None:
    relay = compose()["services"]["outbox-relay"]
    assert pex_of(relay) == "services.web/web.pex" and relay["command"] == ["relay_outbox"]
    assert relay["restart"] == "unless-stopped" and relay["stop_signal"] == "SIGTERM"
    assert "redis" not in relay["depends_on"], "it must start while Redis is down: that is its job"
    unit = units()["jobs-outbox-relay.service"]["Service"]
    assert unit["ExecStart"] == "/opt/jobs/web.pex relay_outbox" and unit["KillSignal"] == "SIGTERM"
    assert "relay_outbox" in (ROOT / "README.md").read_text()

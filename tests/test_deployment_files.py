"""docker-compose.yml stays consistent with the code and the README (Docker does not run here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from common.catalogue import SERVICES

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

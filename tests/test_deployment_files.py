"""docker-compose.yml stays consistent with the code and the README (Docker does not run here)."""

from __future__ import annotations

import configparser
import ipaddress
import json
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
        parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys are case-sensitive in systemd
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


# ---- compose is production-shaped (issue 21, items 5 and 8) ----

COMPOSE_DIR = ROOT / "deploy" / "compose"


def test_gunicorn_is_published_nowhere_only_the_tls_proxy_is() -> None:
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert "web" not in published, "gunicorn must be reachable only through the proxy"
    assert set(published) == {"proxy", "flower"}
    assert published["flower"] == ["127.0.0.1:5555:5555"]
    assert published["proxy"] == ["${PROXY_HTTPS_PORT:-443}:443", "${PROXY_HTTP_PORT:-80}:80"]
    assert not any("8000" in port for ports in published.values() for port in ports)
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert "./deploy/compose/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]


def test_the_admin_trusts_x_forwarded_for_from_the_proxy_alone() -> None:
    spec = compose()
    services = spec["services"]
    address = services["proxy"]["networks"]["edge"]["ipv4_address"]
    assert json.loads(services["web"]["environment"]["TRUSTED_PROXIES"]) == [address]
    subnet = spec["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    on_edge = sorted(n for n, s in services.items() if "edge" in (s.get("networks") or []))
    assert on_edge == ["proxy", "web"], "only the proxy may reach gunicorn from the trusted network"


def test_the_proxy_terminates_tls_and_sets_the_forwarded_headers_itself() -> None:
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    lines = [line.split("#", 1)[0].strip() for line in conf.splitlines()]
    directives = [line for line in lines if line]
    assert "listen 443 ssl;" in directives and "listen 80;" in directives
    assert "return 301 https://$host$request_uri;" in directives, "plain HTTP only redirects"
    assert "server web:8000;" in directives and "proxy_pass http://web;" in directives
    assert "ssl_certificate /tls/proxy.crt;" in directives
    assert "ssl_certificate_key /tls/proxy.key;" in directives
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in directives
    # Overwritten, never appended to: a client's own X-Forwarded-For does not reach the admin.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in directives
    assert "proxy_set_header X-Forwarded-Proto https;" in directives
    assert "proxy_set_header Host $http_host;" in directives
    assert not any("proxy_add_x_forwarded_for" in line for line in directives)


def test_compose_runs_production_with_redis_over_verified_tls() -> None:
    spec = compose()
    env = spec["x-app-env"]
    assert env["ENVIRONMENT"] == "${ENVIRONMENT:-production}"
    for name, url in redis_urls().items():
        assert url.startswith("rediss://"), f"{name}: Redis over TLS"
        assert url.endswith("@redis:6379/0?ssl_ca_certs=/tls/ca.crt"), f"{name}: the certificate is verified"
    for name in ("CRM_URL", "PAYMENT_GATEWAY_URL", "EMAIL_HOST"):
        assert env[name].startswith(f"${{{name}:?"), f"{name}: required (production has no safe default)"
    assert env["EMAIL_USE_TLS"] == "${EMAIL_USE_TLS:-true}"
    redis_command = spec["services"]["redis"]["command"][2]
    for flag in (
        "--port 0",
        "--tls-port 6379",
        "--tls-cert-file /tls/redis.crt",
        "--tls-key-file /tls/redis.key",
    ):
        assert flag in redis_command, flag
    assert "--tls" in spec["services"]["redis"]["healthcheck"]["test"]
    tls = "${TLS_DIR:-./deploy/compose/tls}:/tls:ro"
    for name, service in spec["services"].items():
        if name not in ("postgres",):
            assert tls in service.get("volumes", []), f"{name}: needs the CA (or its certificate) at /tls"
    assert (COMPOSE_DIR / "tls" / ".gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_dev_certs_makes_what_compose_mounts_and_clients_can_verify(tmp_path: Path) -> None:
    import ssl

    out = subprocess.run(
        [str(COMPOSE_DIR / "dev-certs"), str(tmp_path), "jobs.example.com"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for name in ("ca.crt", "redis.crt", "redis.key", "proxy.crt", "proxy.key"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "redis.key").stat().st_mode & 0o077 == 0, "keys are private"
    for name, hosts in (("redis", ["redis", "localhost"]), ("proxy", ["jobs.example.com", "localhost"])):
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / f"{name}.crt")],
            capture_output=True,
            text=True,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        for host in hosts:  # the names the clients check (REDIS_URL's `redis`, the browser's)
            named = subprocess.run(
                ["openssl", "x509", "-in", str(tmp_path / f"{name}.crt"), "-noout", "-checkhost", host],
                capture_output=True,
                text=True,
            )
            assert "does match" in named.stdout, (name, host, named.stdout)
    # What redis-py does with REDIS_URL's ssl_ca_certs: a context that loads this CA.
    ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))


# ---- one Redis user per component (issue 21, item 11) ----

# The Redis user each component logs in as: the four workers share one, the admin's
# migrations run as the admin.
REDIS_USER_OF = {
    **{name: "worker" for name in SERVICES},
    "migrate": "web",
    "web": "web",
    "outbox-relay": "relay",
    "beat": "scheduler",
    "flower": "monitor",
}


def redis_urls() -> dict[str, str]:
    """Each compose service's REDIS_URL (the services that have one)."""
    return {
        name: service["environment"]["REDIS_URL"]
        for name, service in compose()["services"].items()
        if "REDIS_URL" in (service.get("environment") or {})
    }


def test_each_service_reaches_redis_as_its_own_user_with_its_own_required_password() -> None:
    urls = redis_urls()
    assert set(urls) == set(REDIS_USER_OF), "every app service, and only those, reaches Redis"
    password_of: dict[str, set[str]] = {}
    for name, url in urls.items():
        found = re.fullmatch(
            r"rediss://(\w+):\$\{(\w+):\?[^}]+\}@redis:6379/0\?ssl_ca_certs=/tls/ca\.crt", url
        )
        assert found, f"{name}: {url}"
        user, variable = found.groups()
        assert user == REDIS_USER_OF[name], f"{name} logs in as {user}, not {REDIS_USER_OF[name]}"
        assert variable == f"REDIS_{user.upper()}_PASSWORD", f"{name}: {variable}"
        password_of.setdefault(user, set()).add(variable)
    # No two components share a password, and each component has exactly one.
    variables = [v for vs in password_of.values() for v in vs]
    assert all(len(vs) == 1 for vs in password_of.values()) and len(variables) == len(set(variables))
    assert set(password_of) == {"worker", "web", "relay", "scheduler", "monitor"}
    spec = compose()
    assert "REDIS_URL" not in spec["x-app-env"] and "REDIS_PASSWORD" not in json.dumps(spec)
    # The redis container gets every password (it builds the users from them), each required.
    redis_env = spec["services"]["redis"]["environment"]
    for variable in variables:
        assert redis_env[variable] == f"${{{variable}:?set {variable}}}", variable
    assert redis_env["REDIS_ADMIN_PASSWORD"] == "${REDIS_ADMIN_PASSWORD:-}", "the operator's user is optional"
    assert redis_env["REDISCLI_AUTH"] == "${REDIS_MONITOR_PASSWORD:?set REDIS_MONITOR_PASSWORD}"
    assert "--user" in (health := spec["services"]["redis"]["healthcheck"]["test"])
    assert health[health.index("--user") + 1] == "monitor"


def test_the_redis_users_compose_loads_are_the_components_users() -> None:
    template = (COMPOSE_DIR / "redis" / "users.acl").read_text()
    declared = re.findall(r"^user (\S+)", template, flags=re.M)
    assert sorted(declared) == sorted({*REDIS_USER_OF.values(), "admin?"})
    render = COMPOSE_DIR / "redis" / "render-users"
    assert render.stat().st_mode & 0o111, "render-users is executable"
    redis = compose()["services"]["redis"]
    assert "./deploy/compose/redis:/etc/jobs-redis:ro" in redis["volumes"]
    script = redis["command"][2]
    assert "sh /etc/jobs-redis/render-users /etc/jobs-redis/users.acl" in script
    assert "exec redis-server - " in script, "the users reach redis-server on stdin"

"""The admin's production settings pass Django's deployment checklist and serve HTTPS only.

Run as deployed: `python -m web.manage ...` in a process of its own with a production
environment (the session's own settings are the test ones).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from devtools.processes import child_env

PRODUCTION = {
    "ENVIRONMENT": "production",
    "DJANGO_SECRET_KEY": "k3y-" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_aBcDeFgHiJ",
    "DATABASE_URL": "postgres://jobs:db-hunter2@db.internal:5432/jobs",
    "REDIS_URL": "rediss://:redis-hunter2@redis.internal:6380/0",
    "ALLOWED_HOSTS": '["jobs.example.com"]',
}

# What a request through the TLS proxy and one straight to gunicorn get back.
PROBE = """
import json, django
django.setup()
from django.test import Client
c = Client(HTTP_HOST="jobs.example.com")
plain = c.get("/admin/")
proxied = c.get("/healthz", HTTP_X_FORWARDED_PROTO="https")
health = c.get("/healthz")
print(json.dumps({
    "plain": [plain.status_code, plain.get("Location")],
    "hsts": proxied.get("Strict-Transport-Security"),
    "health": health.status_code,
}))
"""


def manage(tmp_path: Path, *argv: str, **changes: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": child_env()["PYTHONPATH"],
        "DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "web.settings",
        **PRODUCTION,
        **changes,
    }
    return subprocess.run(
        [sys.executable, *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_finds_nothing_with_production_settings(tmp_path: Path) -> None:
    out = manage(tmp_path, "-m", "web.manage", "check", "--deploy", "--fail-level", "WARNING")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout


def test_check_deploy_would_flag_the_development_defaults(tmp_path: Path) -> None:
    # The check is real: outside production the HTTPS settings are off and it says so.
    out = manage(
        tmp_path, "-m", "web.manage", "check", "--deploy", "--fail-level", "WARNING", ENVIRONMENT="staging"
    )
    assert out.returncode == 1
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in out.stderr


def test_production_redirects_to_https_and_sends_hsts_behind_the_proxy(tmp_path: Path) -> None:
    out = manage(tmp_path, "-c", PROBE)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["plain"] == [301, "https://jobs.example.com/admin/"]
    assert seen["hsts"] == "max-age=31536000; includeSubDomains"
    assert seen["health"] == 200  # a probe straight to gunicorn is not redirected


def test_the_web_entry_point_refuses_an_insecure_production_config_in_one_line(tmp_path: Path) -> None:
    out = manage(tmp_path, "-m", "web.manage", "check", REDIS_URL="redis://:redis-hunter2@redis.internal/0")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "Invalid configuration (environment variables):",
        "  REDIS_URL: must use TLS (rediss://) in production for a Redis that is not on this machine",
    ]


# ---- docker-compose.yml's admin, as compose would start it (issue 21, item 8) ----

ROOT = Path(__file__).resolve().parents[3]
# What an operator puts in compose's .env: every required variable, nothing else.
COMPOSE_DOT_ENV = {
    "DJANGO_SECRET_KEY": PRODUCTION["DJANGO_SECRET_KEY"],
    "POSTGRES_PASSWORD": "db-hunter2",
    "REDIS_WEB_PASSWORD": "0123456789abcdef0123456789abcdef",
    "FLOWER_PASSWORD": "flower-hunter2",
    "CRM_URL": "https://crm.example",
    "PAYMENT_GATEWAY_URL": "https://gateway.example",
    "EMAIL_HOST": "smtp.example.com",
}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(value: str, dot_env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, as `docker compose config` does."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if dot_env.get(name):
            return dot_env[name]
        assert kind != "?", f"compose would refuse to start: {rest}"
        return rest if kind == "-" else ""

    return INTERPOLATION.sub(one, value.replace("$$", "\0")).replace("\0", "$")


def compose_web_env(dot_env: dict[str, str]) -> dict[str, str]:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = spec["services"]["web"]["environment"]
    return {name: interpolate(str(value), dot_env) for name, value in env.items()}


# Through compose's proxy (its address is TRUSTED_PROXIES) and straight at gunicorn.
COMPOSE_PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.test import Client
proxy = json.loads(__import__("os").environ["TRUSTED_PROXIES"])[0]
c = Client(HTTP_HOST="localhost", REMOTE_ADDR=proxy)
login = c.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https", HTTP_X_FORWARDED_FOR="198.51.100.7")
plain = Client(HTTP_HOST="localhost", REMOTE_ADDR="172.30.0.99").get("/admin/login/")
print(json.dumps({
    "environment": settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE,
    "login": login.status_code,
    "csrf_cookie_secure": bool(login.cookies["csrftoken"]["secure"]),
    "hsts": login.get("Strict-Transport-Security"),
    "plain": [plain.status_code, plain.get("Location")],
}))
"""


def test_compose_runs_the_admin_as_production_and_it_passes_the_deploy_check(tmp_path: Path) -> None:
    env = compose_web_env(COMPOSE_DOT_ENV)
    assert env["ENVIRONMENT"] == "production", "compose's default"
    # Only the entries the production settings read; PRODUCTION's own values are replaced.
    changes = {**{k: "" for k in PRODUCTION if k not in env}, **env}
    out = manage(tmp_path, "-m", "web.manage", "check", "--deploy", "--fail-level", "WARNING", **changes)
    assert out.returncode == 0, out.stdout + out.stderr
    out = manage(tmp_path, "-c", COMPOSE_PROBE, **changes)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["environment"] is True, "Secure session and CSRF cookies"
    assert seen["login"] == 200 and seen["csrf_cookie_secure"] is True
    assert seen["hsts"] == "max-age=31536000; includeSubDomains"
    assert seen["plain"] == [301, "https://localhost/admin/login/"], "plain HTTP is only redirected"


def test_compose_with_a_plain_http_peer_still_starts_the_admin(tmp_path: Path) -> None:
    """The CRM is the sync worker's peer, refused by that worker alone
    (tests/test_service_settings_processes.py): the admin never calls it."""
    dot_env = {**COMPOSE_DOT_ENV, "CRM_URL": "http://crm.example"}
    changes = {**{k: "" for k in PRODUCTION}, **compose_web_env(dot_env)}
    out = manage(tmp_path, "-m", "web.manage", "check", **changes)
    assert out.returncode == 0, out.stderr

"""Each worker refuses to start in production when its own peer's settings are unsafe, and only then.

Real processes, as deployed: `python -m <service>.worker --help` with a production environment.
The settings check runs before Celery parses its arguments, so a refusal exits 1 with one line
per variable (no traceback, no value), and an accepted configuration reaches Celery's help (exit
0) without any broker. The CRM, the gateway and the mail relay are each checked by the one
service that uses them (services/<svc>/config.py): a worker is not stopped by another's peer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.processes import child_env
from tests.test_compose_redis import compose, interpolate

HEADER = "Invalid configuration (environment variables):"
# What every process needs in production (`common.settings.Settings`), all of it acceptable.
PRODUCTION = {
    "ENVIRONMENT": "production",
    "DJANGO_SECRET_KEY": "k3y-" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_aBcDeFgHiJ",
    "DATABASE_URL": "postgres://jobs:db-hunter2@db.internal:5432/jobs",
    "REDIS_URL": "rediss://:redis-hunter2@redis.internal:6380/0",
    "ALLOWED_HOSTS": '["jobs.example.com"]',
}
# Each service's own peer: safe for production, unsafe, and the one line that refuses the unsafe.
SAFE = {
    "emails": {"EMAIL_HOST": "smtp.example.com", "EMAIL_PORT": "587", "EMAIL_USE_TLS": "true"},
    "payments": {"PAYMENT_GATEWAY_URL": "https://gateway.example"},
    "sync": {"CRM_URL": "https://crm.example"},
}
UNSAFE = {
    "emails": {
        "EMAIL_HOST": "smtp.example.com",
        "EMAIL_USE_TLS": "false",
        "EMAIL_HOST_PASSWORD": "smtp-hunter2",
    },
    "payments": {"PAYMENT_GATEWAY_URL": "http://gw:gw-hunter2@gateway.example"},
    "sync": {"CRM_URL": "http://crm:crm-hunter2@crm.example"},
}
REFUSAL = {
    "emails": "  EMAIL_USE_TLS: must be true in production when EMAIL_HOST is not this machine "
    "(STARTTLS, port 587; or EMAIL_USE_SSL=true, port 465); without TLS only a relay on localhost "
    "may be used",
    "payments": "  PAYMENT_GATEWAY_URL: must be an https:// URL in production "
    "(PAYMENT_GATEWAY_API_KEY would travel in clear)",
    "sync": "  CRM_URL: must be an https:// URL in production (CRM_API_TOKEN would travel in clear)",
}


def start_worker(service: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m <service>.worker --help` with exactly `env` (plus the path to our code)."""
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": child_env()["PYTHONPATH"],
        "DATA_DIR": str(cwd),
        "DJANGO_SETTINGS_MODULE": "common.django_settings",
        **env,
    }
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", f"{service}.worker", "--help"],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    print(f"{service}: exit {out.returncode} after {time.monotonic() - started:.1f} s")
    return out


@pytest.mark.parametrize("service", sorted(SAFE))
def test_a_worker_refuses_its_own_unsafe_peer_in_one_line(service: str, tmp_path: Path) -> None:
    out = start_worker(service, {**PRODUCTION, **UNSAFE[service]}, tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == [HEADER, REFUSAL[service]]  # no traceback
    assert "hunter2" not in out.stderr


@pytest.mark.parametrize("service", [*sorted(SAFE), "reports"])
def test_a_worker_starts_with_its_own_peer_safe_whatever_the_others_are(service: str, tmp_path: Path) -> None:
    env = dict(PRODUCTION)
    for other, unsafe in UNSAFE.items():
        env.update(SAFE[other] if other == service else unsafe)
    out = start_worker(service, env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Start worker instance." in out.stdout  # Celery's help: the settings were accepted


def test_compose_with_a_plain_http_crm_stops_the_sync_worker(tmp_path: Path) -> None:
    """docker-compose.yml's sync container, its environment interpolated as compose would."""
    dot_env = {
        "DJANGO_SECRET_KEY": PRODUCTION["DJANGO_SECRET_KEY"],
        "POSTGRES_PASSWORD": "db-hunter2",
        "REDIS_WORKER_PASSWORD": "0123456789abcdef0123456789abcdef",
        "CRM_URL": "http://crm.example",
        "PAYMENT_GATEWAY_URL": "https://gateway.example",
        "EMAIL_HOST": "smtp.example.com",
    }
    env = {k: interpolate(str(v), dot_env) for k, v in compose()["services"]["sync"]["environment"].items()}
    assert env["ENVIRONMENT"] == "production", "compose's default"
    out = start_worker("sync", env, tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [HEADER, REFUSAL["sync"]]

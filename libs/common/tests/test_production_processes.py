"""A Django process started with a production environment: refused in one line per variable,
or `check --deploy` clean. Split from fast/test_production_settings.py (the fast tier starts no
process); these start real processes, as a deployment would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import common.django_settings  # noqa: F401 - started in a subprocess below; imported so Pants packs it
from devtools.processes import child_env

# The same production configuration as fast/test_production_settings.py's: each test breaks one thing.
GOOD_KEY = "k3y-" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_aBcDeFgHiJ"  # 52 characters, random-looking
# A production configuration that passes every check: each test breaks one thing.
PRODUCTION = {
    "ENVIRONMENT": "production",
    "DJANGO_SECRET_KEY": GOOD_KEY,
    "DATABASE_URL": "postgres://jobs:db-hunter2@db.internal:5432/jobs",
    "REDIS_URL": "rediss://:redis-hunter2@redis.internal:6380/0",
    "ALLOWED_HOSTS": '["jobs.example.com"]',
}

# Real processes: the settings module Django loads in every worker, beat and relay.


def production_process_env(tmp_path: Path, **changes: str | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": child_env()["PYTHONPATH"],
        "DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "common.django_settings",
        **PRODUCTION,
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_a_process_with_an_insecure_production_config_exits_1_with_one_line_per_variable(
    tmp_path: Path,
) -> None:
    env = production_process_env(
        tmp_path,
        DJANGO_SECRET_KEY="short-hunter2",
        DATABASE_URL=None,
        REDIS_URL="redis://:redis-hunter2@redis.internal:6379/0",
        ALLOWED_HOSTS='["*"]',
    )
    out = run(["-m", "django", "check"], env, tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "Invalid configuration (environment variables):",
        "  DJANGO_SECRET_KEY: must be set in production to at least 50 random characters; generate one "
        "with: python -c 'import secrets; print(secrets.token_urlsafe(50))'",
        "  DATABASE_URL: must be set to a postgres:// URL in production (SQLite is for development)",
        "  REDIS_URL: must use TLS (rediss://) in production for a Redis that is not on this machine",
        '  ALLOWED_HOSTS: must list the admin\'s host names in production, not "*"',
    ]  # no traceback, no value; a service's own peers: tests/test_service_settings_processes.py


def test_a_malformed_allowed_hosts_stops_a_process_with_one_line(tmp_path: Path) -> None:
    env = production_process_env(tmp_path, ALLOWED_HOSTS="jobs.example.com")
    out = run(["-m", "django", "check"], env, tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "Invalid configuration (environment variables):",
        '  ALLOWED_HOSTS: must be a JSON list, e.g. ["jobs.example.com"]',
    ]


def test_check_deploy_passes_with_production_settings(tmp_path: Path) -> None:
    out = run(
        ["-m", "django", "check", "--deploy", "--fail-level", "WARNING"],
        production_process_env(tmp_path),
        tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout


def test_check_deploy_passes_with_hsts_preload_consented(tmp_path: Path) -> None:
    env = production_process_env(tmp_path, SECURE_HSTS_PRELOAD="true")
    out = run(["-m", "django", "check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues (0 silenced)" in out.stdout

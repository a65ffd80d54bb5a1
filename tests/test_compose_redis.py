"""docker-compose.yml's Redis: TLS and a password on every URL, never on a command line; Flower on loopback.

Docker does not run here, so the redis service's command runs as compose would run it
(`sh -c`, its environment, `$$` and `${VAR:?..}` interpolated as compose does), on a free
port with deploy/compose/dev-certs' certificates in place of /tls, and a real worker and
producer use the REDIS_URL compose gives every service.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from devtools.platform import worker_process
from devtools.ports import free_port
from devtools.processes import child_env

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "0123456789abcdef-compose"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR:?err} (required), ${VAR:-default}, ${VAR}, and $$ for $."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"required variable {name} is missing a value: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}", one, value.replace("$$", "\0")).replace("\0", "$")


def test_every_service_reaches_redis_with_the_password_and_flower_only_on_loopback() -> None:
    spec = compose()
    services = spec["services"]
    for name, service in services.items():
        url = (service.get("environment") or {}).get("REDIS_URL")
        if name in ("redis", "postgres", "proxy"):
            continue
        assert (
            url == "rediss://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379/0?ssl_ca_certs=/tls/ca.crt"
        ), (
            name,
            url,
        )
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        interpolate(spec["x-app-env"]["REDIS_URL"], {})
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert "ports" not in services["redis"], "Redis stays on the compose network"
    command = " ".join(services["redis"]["command"])
    assert "--requirepass" not in command, "the password would show in ps"
    assert "--maxmemory-policy noeviction" in command and "--appendonly yes" in command


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli (the healthcheck)")
def test_compose_redis_demands_the_password_and_a_worker_runs_tasks_with_it(
    data_dir: Path, tmp_path: Path
) -> None:
    spec = compose()
    redis = spec["services"]["redis"]
    env = {"REDIS_PASSWORD": PASSWORD}
    container_env = {k: interpolate(str(v), env) for k, v in redis["environment"].items()}
    port = free_port()
    tls = tmp_path / "tls"  # what compose mounts at /tls
    made = subprocess.run(
        [str(ROOT / "deploy" / "compose" / "dev-certs"), str(tls)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    argv = [interpolate(part, env).replace("/tls/", f"{tls}/") for part in redis["command"]]
    assert "--port 0 --tls-port 6379" in argv[-1], "TLS only"
    argv[-1] = argv[-1].replace("--tls-port 6379", f"--tls-port {port} --bind 127.0.0.1 --dir {tmp_path}")
    server = subprocess.Popen(argv, env={**os.environ, **container_env}, stdout=subprocess.DEVNULL)
    try:
        cli = ["redis-cli", "--tls", "--cacert", f"{tls}/ca.crt", "-h", "localhost", "-p", str(port)]
        health = redis["healthcheck"]["test"][1:]
        assert health == ["redis-cli", "--tls", "--cacert", "/tls/ca.crt", "-h", "localhost", "ping"]
        deadline = time.monotonic() + 10
        while True:  # the healthcheck, as compose runs it: REDISCLI_AUTH from the environment
            out = subprocess.run(
                [*cli, "ping"], env={**os.environ, **container_env}, capture_output=True, text=True
            )
            if out.stdout.strip() == "PONG":
                break
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(0.1)
        no_auth = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        refused = subprocess.run([*cli, "set", "x", "1"], env=no_auth, capture_output=True, text=True)
        assert "NOAUTH" in refused.stdout + refused.stderr  # a client without the password is refused
        authed = {**os.environ, **container_env}
        policy = subprocess.run(
            [*cli, "config", "get", "maxmemory-policy"], env=authed, capture_output=True, text=True
        )
        assert policy.stdout.split() == ["maxmemory-policy", "noeviction"]
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
        assert "redis-server" in cmdline and PASSWORD not in cmdline

        url = (
            interpolate(spec["x-app-env"]["REDIS_URL"], env)
            .replace("@redis:6379", f"@localhost:{port}")
            .replace("/tls/", f"{tls}/")
        )
        assert url.startswith("rediss://"), "the certificate is verified against compose's CA"
        log = data_dir / "compose-sync-worker.log"
        worker = worker_process(
            "sync", log, ["--without-mingle", "--without-gossip"], {"REDIS_URL": url}, name="compose-sync"
        ).start()
        try:
            script = (
                "import time\n"
                "from common.celery_app import create_app\n"
                "app = create_app('producer')\n"
                "from common import calls\n"
                "deadline = time.monotonic() + 60\n"
                "while not app.control.ping(timeout=0.5):\n"
                "    assert time.monotonic() < deadline, 'no worker'\n"
                "print('ECHO', calls.apply_async('sync.echo', (8,), outbox=False).get(timeout=30))\n"
            )
            out = subprocess.run(
                [sys.executable, "-c", script],
                env=child_env({"REDIS_URL": url}),
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            worker.stop()
        assert "ECHO 8" in out.stdout, out.stdout + out.stderr[-3000:] + log.read_text()[-2000:]
        assert PASSWORD not in log.read_text()
    finally:
        server.terminate()
        server.wait(10)

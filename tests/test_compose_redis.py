"""docker-compose.yml's Redis: TLS, one ACL user per component with only the commands it sends,
no password on a command line; Flower on loopback.

Docker does not run here, so the redis service's command runs as compose would run it
(`sh -c`, its environment, `$$` and `${VAR:?..}` interpolated as compose does), on a free
port with deploy/compose/dev-certs' certificates in place of /tls and deploy/compose/redis in
place of its mount, and real processes use the REDIS_URL compose gives each service: a sync
worker as `worker`, a producer and the dead-letter tools as `web`, the queue reader as
`monitor`, sends as `relay` and `scheduler`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
import redis
import yaml

from devtools.platform import worker_process
from devtools.ports import free_port
from devtools.processes import child_env

ROOT = Path(__file__).resolve().parents[1]
REDIS_DIR = ROOT / "deploy" / "compose" / "redis"
USERS = ("worker", "web", "scheduler", "relay", "monitor")
# What each compose service logs in as.
SERVICE_USER = {
    "emails": "worker",
    "payments": "worker",
    "reports": "worker",
    "sync": "worker",
    "migrate": "web",
    "web": "web",
    "outbox-relay": "relay",
    "beat": "scheduler",
    "flower": "monitor",
}
PASSWORDS = {user: f"{user}-0123456789abcdef-compose" for user in (*USERS, "admin")}
ENV = {f"REDIS_{user.upper()}_PASSWORD": password for user, password in PASSWORDS.items()}


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


def test_every_service_reaches_redis_as_its_own_user_and_flower_only_on_loopback() -> None:
    spec = compose()
    services = spec["services"]
    for name, service in services.items():
        url = (service.get("environment") or {}).get("REDIS_URL")
        if name in ("redis", "postgres", "proxy"):
            assert url is None, name
            continue
        user = SERVICE_USER[name]
        var = f"REDIS_{user.upper()}_PASSWORD"
        expected = f"rediss://{user}:${{{var}:?set {var}}}@redis:6379/0?ssl_ca_certs=/tls/ca.crt"
        assert url == expected, (name, url)
        with pytest.raises(KeyError, match=var):
            interpolate(url, {})
    assert "REDIS_URL" not in spec["x-app-env"], "no shared URL: each service names its own user"
    assert "REDIS_PASSWORD" not in (ROOT / "docker-compose.yml").read_text(), "no shared password left"
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert "ports" not in services["redis"], "Redis stays on the compose network"
    command = " ".join(services["redis"]["command"])
    assert "--requirepass" not in command and "requirepass" not in command, "ACL users, not one password"
    assert "--maxmemory-policy noeviction" in command and "--appendonly yes" in command
    assert "./deploy/compose/redis:/etc/jobs-redis:ro" in services["redis"]["volumes"]


def acl_users() -> dict[str, list[str]]:
    """users.acl as render-users reads it: user name -> its rules (continuation lines joined)."""
    users: dict[str, list[str]] = {}
    name = ""
    for line in (REDIS_DIR / "users.acl").read_text().splitlines():
        line = line.split("#", 1)[0]
        if not line.strip():
            continue
        if line.startswith("user "):
            name = line.split()[1]
            users[name] = line.split()[2:]
        else:
            assert line[0] in " \t" and name, line
            users[name] += line.split()
    return users


def test_the_acl_template_gives_no_component_a_dangerous_or_admin_command() -> None:
    users = acl_users()
    assert set(users) == {*USERS, "admin?"}, "one user per component kind, and the optional admin"
    assert users["admin?"] == ["~*", "&*", "+@all"]
    port = free_port()  # a plain redis-server, to ask its version which commands are in which category
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""], stdout=subprocess.DEVNULL
    )
    try:
        client = redis.Redis(port=port, decode_responses=True)
        wait_for(client.ping)
        forbidden: set[str] = set()
        for category in ("dangerous", "admin"):
            forbidden |= {str(name) for name in client.command_list(category=category)}
    finally:
        server.terminate()
        server.wait(10)
    assert {
        "flushall",
        "flushdb",
        "config|get",
        "debug",
        "shutdown",
        "acl|log",
        "migrate",
        "keys",
    } <= forbidden
    forbidden |= {"eval", "eval_ro", "fcall", "function", "script|flush", "script|kill", "client", "acl"}
    for user in USERS:
        rules = users[user]
        assert rules[rules.index("-@all") - 1].startswith(("~", "&")) and "-@all" in rules, user
        granted = [rule[1:] for rule in rules if rule.startswith("+")]
        assert not [g for g in granted if g.startswith("@")], f"{user}: commands, not categories"
        assert not forbidden & set(granted), f"{user}: {sorted(forbidden & set(granted))}"
        assert len(granted) == len(set(granted)), f"{user}: a command listed twice"
    # Only what publishes and subscribes has pub/sub channels; the senders have none.
    for user in ("scheduler", "relay"):
        assert "&*" not in users[user] and "+publish" not in users[user], user


def wait_for(ping: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ping()  # type: ignore[operator]
            return
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


@dataclass
class ComposeRedis:
    port: int
    tls: Path
    server: subprocess.Popen
    container_env: dict[str, str]
    spec: dict

    def url(self, user: str) -> str:
        """The REDIS_URL compose gives a service logging in as `user`, pointed at this server."""
        service = next(name for name, u in SERVICE_USER.items() if u == user)
        raw = self.spec["services"][service]["environment"]["REDIS_URL"]
        return (
            interpolate(raw, ENV)
            .replace("@redis:6379", f"@localhost:{self.port}")
            .replace("/tls/", f"{self.tls}/")
        )

    def client(self, user: str, password: str | None = None) -> redis.Redis:
        return redis.Redis(
            host="localhost",
            port=self.port,
            username=user,
            password=PASSWORDS[user] if password is None else password,
            ssl=True,
            ssl_ca_certs=f"{self.tls}/ca.crt",
            socket_timeout=10,
        )

    @property
    def cli(self) -> list[str]:
        return [
            "redis-cli",
            "--tls",
            "--cacert",
            f"{self.tls}/ca.crt",
            "-h",
            "localhost",
            "-p",
            str(self.port),
        ]


def compose_redis_argv(spec: dict, env: dict[str, str], port: int, tls: Path, data: Path) -> list[str]:
    """The redis service's command, as compose runs it, with this test's port, /tls and mount."""
    redis_service = spec["services"]["redis"]
    argv = [
        interpolate(part, env).replace("/tls/", f"{tls}/").replace("/etc/jobs-redis/", f"{REDIS_DIR}/")
        for part in redis_service["command"]
    ]
    assert "--port 0 --tls-port 6379" in argv[-1], "TLS only"
    argv[-1] = argv[-1].replace("--tls-port 6379", f"--tls-port {port} --bind 127.0.0.1 --dir {data}")
    return argv


@pytest.fixture(scope="module")
def compose_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeRedis]:
    tmp = tmp_path_factory.mktemp("compose-redis")
    spec = compose()
    redis_service = spec["services"]["redis"]
    container_env = {k: interpolate(str(v), ENV) for k, v in redis_service["environment"].items()}
    tls = tmp / "tls"  # what compose mounts at /tls
    made = subprocess.run(
        [str(ROOT / "deploy" / "compose" / "dev-certs"), str(tls)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    port = free_port()
    argv = compose_redis_argv(spec, ENV, port, tls, tmp)
    server = subprocess.Popen(argv, env={**os.environ, **container_env}, stdout=subprocess.DEVNULL)
    running = ComposeRedis(port, tls, server, container_env, spec)
    try:
        wait_for(running.client("monitor").ping)
        yield running
    finally:
        server.terminate()
        server.wait(10)


def run_as(compose_redis: ComposeRedis, user: str, script: str, timeout: float = 120) -> str:
    """Run `script` in a fresh process whose REDIS_URL is compose's for `user`; its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env({"REDIS_URL": compose_redis.url(user)}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"{user}: {out.stdout}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli (the healthcheck)")
def test_the_healthcheck_logs_in_as_monitor_and_the_default_user_cannot_log_in(
    compose_redis: ComposeRedis,
) -> None:
    redis_service = compose_redis.spec["services"]["redis"]
    health = redis_service["healthcheck"]["test"][1:]
    assert health == [
        "redis-cli",
        "--tls",
        "--cacert",
        "/tls/ca.crt",
        "--user",
        "monitor",
        "-h",
        "localhost",
        "ping",
    ]
    cli = compose_redis.cli
    # The healthcheck as compose runs it: REDISCLI_AUTH (the monitor's password) from the environment.
    out = subprocess.run(
        [*cli, "--user", "monitor", "ping"],
        env={**os.environ, **compose_redis.container_env},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "PONG", out.stdout + out.stderr
    no_auth = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    refused = subprocess.run([*cli, "set", "x", "1"], env=no_auth, capture_output=True, text=True)
    assert "NOAUTH" in refused.stdout + refused.stderr  # no user, no password: refused
    # The default user is off: no password logs it in, not even another user's.
    for password in ("", "anything", PASSWORDS["web"], PASSWORDS["admin"]):
        with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
            compose_redis.client("default", password).ping()
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        compose_redis.client("web", PASSWORDS["worker"]).ping()  # a user takes only its own password
    # No password on any process's command line (`ps`): redis-server's, or the shell's before it.
    cmdline = Path(f"/proc/{compose_redis.server.pid}/cmdline").read_bytes().decode()
    assert "redis-server" in cmdline
    for password in PASSWORDS.values():
        assert password not in cmdline
    admin = compose_redis.client("admin")  # the optional operator's user, set in this test
    assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert set(admin.acl_users()) == {"default", "admin", *USERS}
    assert admin.acl_getuser("default")["enabled"] is False


def test_each_component_is_refused_what_it_never_sends(compose_redis: ComposeRedis) -> None:
    admin = compose_redis.client("admin")
    admin.acl_log_reset()
    # (DEBUG too, but Redis refuses it to everyone before any ACL: enable-debug-command no.)
    never = [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "maxmemory"),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("SHUTDOWN", "NOSAVE"),
        ("ACL", "WHOAMI"),
        ("KEYS", "*"),
        ("CLIENT", "LIST"),
        ("INFO",),
        ("MONITOR",),
        ("EVAL", "return 1", "0"),
        ("SCRIPT", "FLUSH"),
        ("REPLICAOF", "NO", "ONE"),
        ("MODULE", "LIST"),
        ("MIGRATE", "localhost", "1", "k", "0", "1"),
        ("SAVE",),
    ]
    for user in USERS:
        client = compose_redis.client(user)
        assert client.ping()
        for command in never:
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    # Each refusal is in ACL LOG, with the user: what an operator reads to find a missing command.
    logged = {(e["username"], e["object"]) for e in admin.acl_log(count=200)}
    for user in USERS:
        assert (user, "flushall") in logged and (user, "config|get") in logged, user
    # A script is checked against its caller's user too: no way round the list through Lua.
    web = compose_redis.client("web")
    with pytest.raises(redis.exceptions.ResponseError, match="can't run this command"):
        web.register_script("return redis.call('FLUSHALL')")()
    assert compose_redis.client("admin").ping()  # Redis is still up: SHUTDOWN was refused


def test_the_monitor_reads_queue_lengths(compose_redis: ComposeRedis) -> None:
    from common.observability.queues import read_broker

    admin = compose_redis.client("admin")
    admin.lpush("reports", b'{"headers": {}}')
    snapshot = read_broker(compose_redis.client("monitor"), ["reports", "emails"])
    assert [(q.queue, q.length) for q in snapshot.queues] == [("reports", 1), ("emails", 0)]
    admin.delete("reports")


SEND = """
import sys
from common import calls
r = calls.apply_async('sync.echo', ({value},), outbox=False)
print('SENT', r.id)
"""


def test_a_worker_drains_tasks_web_reads_results_and_replays_a_dead_letter_relay_and_scheduler_send(
    compose_redis: ComposeRedis, data_dir: Path
) -> None:
    from common.deadletters import DeadLetters

    url = compose_redis.url("worker")
    assert url.startswith("rediss://worker:"), "the certificate is verified against compose's CA"
    admin = compose_redis.client("admin")
    admin.acl_log_reset()
    admin.delete("sync")
    # A dead letter to replay: a message sent (as web) before any worker runs, taken off its
    # queue and stored as the worker's transport does when handling a message raised.
    sent = run_as(compose_redis, "web", SEND.format(value=21))
    dead_id = sent.split("SENT ")[1].strip()
    raw = cast("bytes | None", compose_redis.client("worker").rpop("sync"))
    assert raw is not None and dead_id in raw.decode()
    entry = DeadLetters(compose_redis.client("worker")).add(
        queue="sync",
        reason="crashed-consumer",
        detail="handling it raised (test)",
        raw=raw,
        worker="test",
        task="sync.echo",
        task_id=dead_id,
    )
    # The outbox relay and beat publish tasks: on the queue, for the worker to run.
    relay_id = run_as(compose_redis, "relay", SEND.format(value=31)).split("SENT ")[1].strip()
    beat_id = run_as(compose_redis, "scheduler", SEND.format(value=41)).split("SENT ")[1].strip()

    log = data_dir / "compose-sync-worker.log"
    worker = worker_process(
        "sync", log, ["--without-mingle", "--without-gossip"], {"REDIS_URL": url}, name="compose-sync"
    ).start()
    try:
        script = (
            "import json, time\n"
            "from celery.result import AsyncResult\n"
            "from common.celery_app import create_app\n"
            "app = create_app('producer')\n"
            "from common import calls\n"
            "from common.deadletters import replay\n"
            "deadline = time.monotonic() + 60\n"
            "while not app.control.ping(timeout=0.5):\n"
            "    assert time.monotonic() < deadline, 'no worker'\n"
            "print('ECHO', calls.apply_async('sync.echo', (8,), outbox=False).get(timeout=30))\n"
            "later = calls.apply_async('sync.echo', (9,), countdown=1, outbox=False)\n"
            "print('LATER', later.get(timeout=30))\n"
            f"print('RELAYED', AsyncResult({relay_id!r}, app=app).get(timeout=30))\n"
            f"print('SCHEDULED', AsyncResult({beat_id!r}, app=app).get(timeout=30))\n"
            "with replay.opened_store() as store:\n"
            "    listed = [e.id for e in store.list('sync')]\n"
            "    print('LISTED', json.dumps(listed))\n"
            f"    outcome = replay.replay(store, {entry.id!r})\n"
            "    print('REPLAYED', outcome.replayed, outcome.reason)\n"
            "    print('LEFT', json.dumps([e.id for e in store.list('sync')]))\n"
            f"print('DEAD', AsyncResult({dead_id!r}, app=app).get(timeout=30))\n"
            # A revoke (web writes it, the worker reads it on receipt and stores REVOKED).
            "from common import cancellation\n"
            "doomed = calls.apply_async('sync.echo', (10,), countdown=1, outbox=False)\n"
            "cancellation.revoke([doomed.id])\n"
            "print('LISTED_REVOKED', int(doomed.id in [r.task_id for r in cancellation.recent(5)]))\n"
            "try:\n"
            "    doomed.get(timeout=30)\n"
            "except Exception as exc:\n"
            "    print('DOOMED', type(exc).__name__)\n"
            "queues = app.control.inspect(timeout=2).active_queues() or {}\n"
            "print('QUEUES', ' '.join(q['name'] for qs in queues.values() for q in qs))\n"
        )
        out = run_as(compose_redis, "web", script)
        # The worker containers' healthcheck, as the worker user.
        live = subprocess.run(
            [sys.executable, "-m", "common.liveness", "sync"],
            env=child_env({"REDIS_URL": url}),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        worker.stop()
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    detail = out + log.read_text()[-3000:]
    assert lines.get("ECHO") == "8" and lines.get("LATER") == "9", detail
    assert lines.get("RELAYED") == "31" and lines.get("SCHEDULED") == "41", detail
    assert json.loads(lines["LISTED"]) == [entry.id] and json.loads(lines["LEFT"]) == [], detail
    assert lines.get("REPLAYED", "").startswith("True"), detail
    assert lines.get("DEAD") == "21", detail
    assert lines.get("LISTED_REVOKED") == "1" and lines.get("DOOMED") == "TaskRevokedError", detail
    assert "sync" in lines.get("QUEUES", ""), detail
    assert live.returncode == 0, live.stdout + live.stderr[-2000:]
    # Nothing any of them sent was refused: every command each needs is in its list.
    assert admin.acl_log(count=50) == [], admin.acl_log(count=50)
    for password in PASSWORDS.values():
        assert password not in log.read_text()


def test_compose_redis_refuses_to_start_without_a_password_or_with_a_shared_one(tmp_path: Path) -> None:
    spec = compose()
    environment = spec["services"]["redis"]["environment"]
    missing = {k: v for k, v in ENV.items() if k != "REDIS_RELAY_PASSWORD"}
    with pytest.raises(KeyError, match="REDIS_RELAY_PASSWORD"):  # compose itself refuses to start it
        {k: interpolate(str(v), missing) for k, v in environment.items()}
    for env, says in (
        (missing, "REDIS_RELAY_PASSWORD is not set"),  # and so does the container
        ({**ENV, "REDIS_MONITOR_PASSWORD": ENV["REDIS_WEB_PASSWORD"]}, "same as another user's"),
        ({**ENV, "REDIS_WEB_PASSWORD": "short"}, "at least 16 characters"),
        ({**ENV, "REDIS_WEB_PASSWORD": "with space and @ 0123456789"}, "URL-safe"),
    ):
        argv = compose_redis_argv(spec, env, free_port(), tmp_path, tmp_path)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("REDIS")}
        out = subprocess.run(
            argv, env={**clean, **env, "REDIS_MAXMEMORY": "1gb"}, capture_output=True, text=True, timeout=20
        )
        assert out.returncode != 0 and says in out.stderr, (says, out.stderr)
        for password in env.values():
            assert password not in out.stderr + out.stdout, "an error names the variable, never its value"

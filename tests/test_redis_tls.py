"""TLS to Redis, verified, everywhere the same: broker, result backend, locks (and beat's leader lock).

A real redis-server listening only on TLS (`--port 0 --tls-port N`), with a throwaway CA
and a server certificate made here with `openssl`. A worker and a producer (separate
processes, as deployed) run a task over `rediss://` with the certificate verified; the
same server reached with another CA's certificate is refused by every client, with
"certificate verify failed" in the error, and a worker pointed at it exits 1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from devtools.platform import worker_process
from devtools.ports import free_port
from devtools.processes import child_env, die_with_parent
from scheduler.leader import LOCK_NAME  # beat's leader lock: the same client, so the same TLS

PASSWORD = "tls-test-pw"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=jobs test {name}",
        cwd=directory,
    )  # fmt: skip


def make_server_cert(directory: Path, ca: str) -> None:
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext",
        cwd=directory,
    )  # fmt: skip


@dataclass
class TLSRedis:
    port: int
    dir: Path

    def url(self, ca: str = "ca", db: int = 0) -> str:
        return f"rediss://:{PASSWORD}@127.0.0.1:{self.port}/{db}?ssl_ca_certs={quote(str(self.dir / ca))}.pem"


def _tls_unsupported(binary: str, directory: Path) -> str | None:
    """Why this redis-server cannot serve TLS (built without it), or None."""
    probe = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--tls-cert-file", str(directory / "server.pem"),
         "--tls-key-file", str(directory / "server.key"), "--tls-ca-cert-file", str(directory / "ca.pem")],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    out = probe.stdout + probe.stderr
    if "not listen anywhere" in out:  # options accepted: built with TLS
        return None
    return f"redis-server was built without TLS support: {out.strip().splitlines()[-1:]}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs redis-server and openssl on PATH")
    directory = tmp_path_factory.mktemp("tls")
    make_ca(directory, "ca")
    make_ca(directory, "other-ca")
    make_server_cert(directory, "ca")
    why = _tls_unsupported(binary, directory)
    if why:
        pytest.skip(why)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(directory / "server.pem"), "--tls-key-file", str(directory / "server.key"),
         "--tls-ca-cert-file", str(directory / "ca.pem"), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
    )  # fmt: skip
    server = TLSRedis(port, directory)
    import redis

    from common.transport.tls import redis_from_url

    client = redis_from_url(server.url(), socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.1)
    client.close()
    try:
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


# Runs in its own process (REDIS_URL from its environment): sends, waits, takes the locks,
# and prints what it saw as JSON; an error's text where a step failed.
PRODUCER = r"""
import json, ssl, sys, time
from common.celery_app import create_app
app = create_app("producer")
from common import calls
from common.transport import locks
LOCK_NAME = sys.argv[2]
out = {}
def chain(exc):
    seen = []
    while exc is not None and len(seen) < 6:
        seen.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(seen)
conn = app.connection_for_write()
out["broker_cert_reqs"] = int(conn.ssl["ssl_cert_reqs"]) if conn.ssl else None
out["backend_cert_reqs"] = int(app.backend.connparams.get("ssl_cert_reqs", -1))
try:
    with locks.task_lock("tls-probe", timeout=30) as held:
        out["task_lock"] = held
    leader = locks.redis_client().lock(LOCK_NAME, timeout=5, thread_local=False)
    out["leader_lock"] = bool(leader.acquire(blocking=False))
    leader.release()
except Exception as exc:
    out["lock_error"] = f"{type(exc).__name__}: {exc}"
try:
    out["backend_ping"] = app.backend.client.ping()
except Exception as exc:
    out["backend_error"] = f"{type(exc).__name__}: {exc}"
try:
    if sys.argv[1] == "run":
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            assert time.monotonic() < deadline, "no worker answered ping over TLS"
        out["echo"] = calls.apply_async("sync.echo", (21,), outbox=False).get(timeout=30)
    else:
        calls.apply_async("sync.echo", (21,), outbox=False)
except Exception as exc:
    out["send_error"] = chain(exc)
print("RESULT " + json.dumps(out))
"""


def run_producer(url: str, mode: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PRODUCER, mode, LOCK_NAME],
        env=child_env({"REDIS_URL": url, "BROKER_SOCKET_TIMEOUT": "2"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"producer failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_worker_and_producer_run_a_task_over_verified_tls(tls_redis: TLSRedis, data_dir: Path) -> None:
    log = data_dir / "tls-sync-worker.log"
    worker = worker_process(
        "sync", log, ["--without-mingle", "--without-gossip"], {"REDIS_URL": tls_redis.url()}, name="tls-sync"
    ).start()
    try:
        seen = run_producer(tls_redis.url(), "run")
    finally:
        worker.stop()
    print("over TLS:", seen)
    assert seen.get("echo") == 21, f"{seen}\n{log.read_text()[-3000:]}"
    assert seen["broker_cert_reqs"] == 2 and seen["backend_cert_reqs"] == 2  # ssl.CERT_REQUIRED
    assert seen["task_lock"] is True and seen["leader_lock"] is True
    assert seen["backend_ping"] is True


def test_a_server_certificate_from_another_ca_is_refused_by_every_client(
    tls_redis: TLSRedis, data_dir: Path
) -> None:
    seen = run_producer(tls_redis.url(ca="other-ca"), "send")
    print("other CA:", seen)
    for step in ("send_error", "backend_error", "lock_error"):
        assert "certificate verify failed" in str(seen.get(step)), (step, seen)
    assert "echo" not in seen and "task_lock" not in seen

    log = data_dir / "tls-other-ca-worker.log"
    worker = worker_process(
        "sync",
        log,
        ["--without-mingle", "--without-gossip"],
        {"REDIS_URL": tls_redis.url(ca="other-ca"), "BROKER_CONNECTION_MAX_RETRIES": "1"},
        name="tls-other-ca",
    ).start()
    try:
        assert worker.proc is not None
        code = worker.proc.wait(90)
    finally:
        worker.stop()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "certificate verify failed" in text, text[-3000:]
    assert PASSWORD not in text


def test_unverified_tls_is_refused_at_start(data_dir: Path) -> None:
    """`ssl_cert_reqs=none` (kombu's silent default) is a configuration error, named as such."""
    proc = subprocess.run(
        [sys.executable, "-c", "from common.celery_app import create_app; create_app('producer')"],
        env=child_env({"REDIS_URL": "rediss://:pw@127.0.0.1:1/0?ssl_cert_reqs=none"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "ssl_cert_reqs=none in the rediss:// Redis URL: the Redis certificate is always verified" in (
        proc.stderr
    )
    assert ":pw@" not in proc.stderr

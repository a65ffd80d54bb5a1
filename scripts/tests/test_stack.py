"""The README's first command: the whole stack comes up and the demo drives every service."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from devtools.processes import child_env


def stack_env(data_dir: Path) -> dict[str, str]:
    env = child_env({"DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "web.settings"})
    for name in ("REDIS_URL", "EMAIL_HOST", "EMAIL_PORT", "CRM_URL", "PAYMENT_GATEWAY_URL", "DATABASE_URL"):
        env.pop(name, None)  # embedded defaults only, as on a fresh machine
    return env


def test_ctrl_c_stops_every_process_of_the_stack(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.stack", "--no-demo"],
        env=stack_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    else:
        raise AssertionError("".join(lines))
    running = " ".join(processes_started_for(tmp_path))
    for worker in ("emails.worker", "payments.worker", "reports.worker", "sync.worker"):
        assert f"-m {worker}" in running
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopping" in rest
    assert processes_started_for(tmp_path) == [], "Ctrl-C left processes running"


def test_stack_runs_the_demo_through_every_service_and_stops_cleanly(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.stack", "--exit-after-demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "logs").glob("*.log"))
    assert proc.returncode == 0, out + logs
    assert "started redis-server" in out
    assert "workers up: emails@" in out and "payments@" in out and "reports@" in out and "sync@" in out
    assert "emailed=True" in out
    assert "'admin_notified': True" in out
    assert "payments.process_payment" in out and "'status': 'success'" in out
    assert "the gateway holds 1 charge(s)" in out
    assert "'status': 'complete', 'processed': 100000" in out
    assert "sync.sync_all_doctors: {'status': 'success', 'queued': 3}" in out
    assert (tmp_path / "db.sqlite3").exists()
    assert os.listdir(tmp_path / "reports")
    assert processes_started_for(tmp_path) == [], "the stack left processes running"


def processes_started_for(data_dir: Path) -> list[str]:
    """Processes whose environment carries this run's DATA_DIR (workers, beat, redis, ...)."""
    marker = f"DATA_DIR={data_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found

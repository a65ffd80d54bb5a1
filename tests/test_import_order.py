"""Every module of `common` imports on its own, first, in a fresh interpreter.

The layers (tests/test_layers.py) are checked between the parts of `common`; a loop between
modules inside one part (the dead-letter store -> batches -> the broker package -> ownership ->
the dead-letter store) slips past them and fails only when a process happens to import its
modules in one order: the web tests, which import the dead letters first, all failed so. Each
module is imported here as a process's first import of `common`, so any such order fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBS = ROOT / "libs"


def modules() -> list[str]:
    found = []
    for path in sorted((LIBS / "common").rglob("*.py")):
        parts = path.relative_to(LIBS).with_suffix("").parts
        if "tests" in parts or "migrations" in parts or parts[-1] == "__main__":
            continue
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def import_alone(module: str) -> tuple[str, int, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(LIBS), str(ROOT / "services"), str(ROOT)]),
        "DJANGO_SETTINGS_MODULE": "common.django_settings",
    }
    run = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
    if "AppRegistryNotReady" in run.stderr:  # it defines or queries models: Django set up first
        code = f"import django; django.setup(); import {module}"
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return module, run.returncode, run.stderr[-1500:]


def test_every_module_of_common_imports_first_on_its_own() -> None:
    names = modules()
    assert len(names) > 50, names  # the walk found the library
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(import_alone, names))
    failed = {module: err for module, code, err in results if code != 0}
    print(
        f"\n[import order] {len(names)} modules of common, each imported first in its own interpreter: "
        f"{len(failed)} failed"
    )
    assert not failed, "\n\n".join(f"{module}:\n{err}" for module, err in failed.items())

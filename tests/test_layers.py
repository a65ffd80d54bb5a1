"""The import structure (.importlinter): `common` in layers with no loop, contracts importing
nothing of the platform, no service importing another. Imports inside functions count too.

Run alone: PYTHONPATH=libs:services:. python -m pytest tests/test_layers.py -q -s
(or `lint-imports` from the repository root with libs and services on PYTHONPATH).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter import api, cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"


def lint(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """import-linter's exit code and report for `config` (no cache: nothing written)."""
    monkeypatch.chdir(config.parent)  # lint_imports puts the working directory on sys.path
    code = cli.lint_imports(config_filename=str(config), no_cache=True, no_logo=True)
    return code, capsys.readouterr().out


@pytest.fixture(autouse=True)
def sources_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packages are found where the platform runs them from (restored afterwards)."""
    for folder in ("services", "libs"):
        monkeypatch.syspath_prepend(str(ROOT / folder))


def test_the_contracts_are_declared() -> None:
    contracts = {c["name"]: c for c in api.read_configuration(str(CONFIG))["contracts_options"]}
    types = sorted(c["type"] for c in contracts.values())
    assert types == ["forbidden", "independence", "layers"], contracts
    layers = next(c for c in contracts.values() if c["type"] == "layers")
    assert layers["containers"] == ["common"] and layers["exhaustive"] == "True"


def test_the_import_structure_keeps_every_contract(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = lint(CONFIG, monkeypatch, capsys)
    with capsys.disabled():
        print("\n" + report)  # the contracts checked, each KEPT or BROKEN with the offending chain
    assert code == cli.EXIT_STATUS_SUCCESS, report


def test_an_import_inside_a_function_breaks_a_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A loop hidden in a function is still a loop: the checker's graph counts it."""
    package = tmp_path / "layered_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text("from layered_probe import low\n")
    (package / "low.py").write_text("def later():\n    from layered_probe import high\n\n    return high\n")
    config = tmp_path / ".importlinter"
    config.write_text(
        "[importlinter]\nroot_package = layered_probe\n\n"
        "[importlinter:contract:probe]\nname = probe\ntype = layers\n"
        "containers = layered_probe\nlayers =\n    high\n    low\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, report = lint(config, monkeypatch, capsys)
    assert code == cli.EXIT_STATUS_ERROR, report
    assert "layered_probe.low -> layered_probe.high (l.2)" in report, report

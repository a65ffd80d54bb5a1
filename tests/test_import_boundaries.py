"""A service never imports another service: only `common` is shared."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES_DIR = ROOT / "services"


def deployables() -> list[str]:
    return sorted(p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").exists())


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value.split(".")[0])
    return names


def test_the_check_sees_every_deployable() -> None:
    assert {"emails", "payments", "reports", "sync", "web"} <= set(deployables())


def test_no_service_imports_another_service() -> None:
    services = set(deployables())
    violations = []
    for service in services:
        for path in sorted((SERVICES_DIR / service).rglob("*.py")):
            for name in imported_top_levels(path) & (services - {service}):
                violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not violations, "services must call each other by task name via common:\n" + "\n".join(violations)


def test_the_check_catches_a_cross_service_import(tmp_path: Path) -> None:
    bad = tmp_path / "tasks.py"
    bad.write_text(
        "from payments.gateway import charge\nimport importlib\nimportlib.import_module('sync.crm')\n"
    )
    assert {"payments", "sync"} <= imported_top_levels(bad)

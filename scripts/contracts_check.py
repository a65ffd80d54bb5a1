"""Contract compatibility check: the task contracts at REF against the working tree's.

    ./scripts/check-contracts --against REF [--repo DIR]

Each side's contracts are read as data by importing them (`contracts.declare`, or before the
per-service split `common.catalogue`) in a subprocess whose only source on the path is that
side's `libs` (REF's is unpacked with `git archive`), and dumped as JSON: per task its name,
queue and parameters in order, each with its annotation (the members of its union,
normalised to strings) and whether it has a default; and each TypedDict payload shape's
fields, so a field removed or made required breaks and a new optional field is additive.

Breaking (one line each, exit 1): a task removed, a queue changed, a parameter removed,
renamed or moved, a new parameter without a default, a default dropped, a type narrowed
(the new annotation does not accept everything the old one did). Additive (exit 0): a new
task, a new parameter with a default, a type widened. Exit 2: the check could not run.

The module imports only the standard library: it is also the dumper (`--dump`), run by
each side's Python path with nothing of this checkout on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE_DIR = "libs"
SHAPES: dict[str, dict[str, Any]] = {}  # TypedDict name -> fields, filled while dumping
ANY = "Any"


class CheckError(Exception):
    """The check could not run (bad REF, no catalogue, import failed); exit 2."""


# --- dumping (runs in the subprocess, against one side's `libs`) ---------------------------
def type_members(annotation: Any) -> list[str]:
    """An annotation as the sorted members of its union; `Any` (or none) accepts everything."""
    import inspect
    import types
    import typing

    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return [ANY]
    if isinstance(annotation, str):  # an annotation left unevaluated
        return [annotation.replace("typing.", "")]
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members: set[str] = set()
        for arg in typing.get_args(annotation):
            members.update(type_members(arg))
        return [ANY] if ANY in members else sorted(members)
    if annotation is None or annotation is type(None):
        return ["None"]
    if typing.is_typeddict(annotation) or _is_typeddict_ext(annotation):
        name = annotation.__qualname__
        if name not in SHAPES:
            SHAPES[name] = {}  # before the fields: a shape may refer to itself
            required: frozenset[str] = getattr(annotation, "__required_keys__", frozenset())
            hints = typing.get_type_hints(annotation)
            SHAPES[name] = {
                f: {"types": type_members(_strip_required(t)), "required": f in required}
                for f, t in hints.items()
            }
        return [name]
    if origin is not None and typing.get_args(annotation):
        inner = ", ".join(" | ".join(type_members(a)) for a in typing.get_args(annotation))
        return [f"{getattr(origin, '__name__', repr(origin))}[{inner}]"]
    if isinstance(annotation, type) and origin is None:
        module = annotation.__module__
        name = annotation.__qualname__
        return [name if module in ("builtins", "typing") else f"{module}.{name}"]
    return [repr(annotation).replace("typing.", "")]


def _is_typeddict_ext(annotation: Any) -> bool:
    try:
        import typing_extensions
    except ImportError:
        return False
    return typing_extensions.is_typeddict(annotation)


def _strip_required(annotation: Any) -> Any:
    """`NotRequired[X]`/`Required[X]` -> X (requiredness is read from the TypedDict itself)."""
    import typing

    origin = typing.get_origin(annotation)
    if origin is not None and getattr(origin, "_name", "") in ("NotRequired", "Required"):
        return typing.get_args(annotation)[0]
    return annotation


def registry() -> Any:
    """This side's contracts: per-service modules (`contracts`), or the older one catalogue."""
    import importlib.util

    try:
        if importlib.util.find_spec("contracts") is not None:
            from contracts.declare import all_contracts

            return all_contracts()
        from common import catalogue  # type: ignore[attr-defined]  # an older revision's registry
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which names the side
        raise CheckError(f"cannot import the contracts: {type(exc).__name__}: {exc}") from None
    found = getattr(catalogue, "CATALOGUE", None)
    if found is None:
        raise CheckError(
            "neither contracts.declare nor common.catalogue.CATALOGUE: the contracts were "
            "reorganised; teach scripts/contracts_check.py (registry) where they live now"
        )
    return found


def dump() -> dict[str, Any]:
    """Every task's contract on this side, as JSON-ready data."""
    registry_ = registry()
    tasks = {}
    for contract in registry_:
        for attr in ("name", "queue", "signature"):
            if not hasattr(contract, attr):
                raise CheckError(f"a contract has no {attr!r}: {contract!r}")
        tasks[contract.name] = {
            "queue": contract.queue,
            "parameters": [
                {
                    "name": p.name,
                    "kind": p.kind.name,
                    "annotation": " | ".join(type_members(p.annotation)),
                    "types": type_members(p.annotation),
                    "has_default": p.default is not p.empty,
                }
                for p in contract.signature.parameters.values()
            ],
        }
    return {"tasks": tasks, "shapes": SHAPES}


# --- reading each side -------------------------------------------------------------------
def git(repo: Path, *args: str) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True)
    if proc.returncode:
        raise CheckError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def extract(repo: Path, ref: str, into: Path) -> Path:
    """`git archive REF libs` unpacked under `into`; returns its `libs`."""
    try:
        sha = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except CheckError:
        raise CheckError(f"{ref!r} is not a commit in {repo}") from None
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", sha, CATALOGUE_DIR], capture_output=True
    )
    if archive.returncode:
        raise CheckError(f"{ref} has no {CATALOGUE_DIR}: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "libs"


def start_dump(libs: Path, scratch: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEX_")}
    env.update(
        PYTHONPATH=str(libs),
        # Importing the catalogue needs neither; set in case it ever pulls settings in.
        DJANGO_SETTINGS_MODULE="common.django_settings",
        DATA_DIR=str(scratch),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return subprocess.Popen(
        [sys.executable, "-P", str(Path(__file__).resolve()), "--dump"],
        cwd=scratch,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_dump(proc: subprocess.Popen[str], side: str) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        raise CheckError(f"reading the contracts at {side}: {last}")
    return json.loads(out)


def read_both(repo: Path, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="contracts-") as tmp:
        scratch = Path(tmp)
        (scratch / "old-data").mkdir()
        (scratch / "new-data").mkdir()
        old_libs = extract(repo, ref, scratch / "old")
        if not (repo / CATALOGUE_DIR).is_dir():
            raise CheckError(f"no {CATALOGUE_DIR} in the working tree {repo}")
        old = start_dump(old_libs, scratch / "old-data")
        new = start_dump(repo / "libs", scratch / "new-data")
        return finish_dump(old, ref), finish_dump(new, "the working tree")


# --- comparing ---------------------------------------------------------------------------
def compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(breaking, additive) changes from `old` to `new`, one line each."""
    breaking: list[str] = []
    additive: list[str] = []
    old_tasks, new_tasks = old["tasks"], new["tasks"]
    for name in sorted(set(new_tasks) - set(old_tasks)):
        additive.append(f"{name}: new task (queue {new_tasks[name]['queue']})")
    for name in sorted(old_tasks):
        was = old_tasks[name]
        if name not in new_tasks:
            breaking.append(f"{name}: task removed (queue {was['queue']})")
            continue
        now = new_tasks[name]
        if was["queue"] != now["queue"]:
            breaking.append(f"{name}: queue changed from {was['queue']} to {now['queue']}")
        b, a = compare_parameters(
            name, was["parameters"], now["parameters"], old.get("shapes", {}), new.get("shapes", {})
        )
        breaking += b
        additive += a
    return breaking, additive


def compare_parameters(
    task: str,
    was: list[dict],
    now: list[dict],
    old_shapes: dict[str, Any] | None = None,
    new_shapes: dict[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    breaking: list[str] = []
    additive: list[str] = []
    old_names = [p["name"] for p in was]
    new_names = [p["name"] for p in now]
    new_by_name = {p["name"]: p for p in now}
    renamed_to: set[str] = set()
    for i, p in enumerate(was):
        pname = p["name"]
        if pname not in new_by_name:
            other = new_names[i] if i < len(now) else None
            if other is not None and other not in old_names:
                renamed_to.add(other)
                breaking.append(f"{task}: parameter {pname!r} renamed to {other!r}")
            else:
                breaking.append(f"{task}: parameter {pname!r} removed")
            continue
        q = new_by_name[pname]
        j = new_names.index(pname)
        if j != i:
            breaking.append(f"{task}: parameter {pname!r} moved from position {i + 1} to {j + 1}")
        if p["has_default"] and not q["has_default"]:
            breaking.append(f"{task}: parameter {pname!r} lost its default")
        if p["kind"] != q["kind"]:
            breaking.append(f"{task}: parameter {pname!r} changed from {p['kind']} to {q['kind']}")
        typed = f"from {p['annotation']} to {q['annotation']}"
        b, a = type_lines(f"{task}: parameter {pname!r}", p["types"], q["types"], typed)
        breaking += b
        additive += a
        b, a = compare_shapes(
            f"{task}: parameter {pname!r}",
            p["annotation"],
            q["annotation"],
            old_shapes or {},
            new_shapes or {},
        )
        breaking += b
        additive += a
    for q in now:
        if q["name"] in old_names or q["name"] in renamed_to:
            continue
        if q["has_default"]:
            additive.append(f"{task}: new parameter {q['name']!r} with a default")
        else:
            breaking.append(f"{task}: new parameter {q['name']!r} without a default")
    return breaking, additive


def compare_shapes(
    where: str,
    was: str,
    now: str,
    old_shapes: dict[str, Any],
    new_shapes: dict[str, Any],
    seen: set | None = None,
) -> tuple[list[str], list[str]]:
    """Field changes of the payload shapes named in both annotations (nested shapes too)."""
    import re

    breaking: list[str] = []
    additive: list[str] = []
    seen = set() if seen is None else seen
    names = set(re.findall(r"[A-Za-z_][\w.]*", was)) & set(re.findall(r"[A-Za-z_][\w.]*", now))
    for shape in sorted(n for n in names if n in old_shapes and n in new_shapes and n not in seen):
        seen.add(shape)
        before, after = old_shapes[shape], new_shapes[shape]
        for field, f in before.items():
            if field not in after:
                breaking.append(f"{where}: {shape} field {field!r} removed")
                continue
            g = after[field]
            if g["required"] and not f["required"]:
                breaking.append(f"{where}: {shape} field {field!r} became required")
            elif f["required"] and not g["required"]:
                additive.append(f"{where}: {shape} field {field!r} became optional")
            typed = f"from {' | '.join(f['types'])} to {' | '.join(g['types'])}"
            b, a = type_lines(f"{where}: {shape} field {field!r}", f["types"], g["types"], typed)
            breaking += b
            additive += a
            b, a = compare_shapes(
                where, " ".join(f["types"]), " ".join(g["types"]), old_shapes, new_shapes, seen
            )
            breaking += b
            additive += a
        for field, g in after.items():
            if field not in before:
                if g["required"]:
                    breaking.append(f"{where}: {shape} new required field {field!r}")
                else:
                    additive.append(f"{where}: {shape} new optional field {field!r}")
    return breaking, additive


def type_lines(what: str, was: list[str], now: list[str], typed: str) -> tuple[list[str], list[str]]:
    """([breaking], [additive]) for one type change of `what` (a parameter or a shape's field)."""
    change = type_change(was, now)
    if change == "narrowed":
        return [f"{what} type narrowed {typed}"], []
    if change == "widened":
        return [], [f"{what} type widened {typed}"]
    return [], []


def type_change(was: list[str], now: list[str]) -> str | None:
    """None (same), "widened" (accepts strictly more) or "narrowed" (anything else)."""
    if set(was) == set(now):
        return None
    if ANY in now or set(now) > set(was):
        return "widened"
    return "narrowed"


ACKNOWLEDGED = "libs/contracts/ACKNOWLEDGED_BREAKS"


def acknowledged(repo: Path) -> dict[str, str]:
    """Breaking lines a change declares deliberate (`<line>  # why`), from the working tree.

    For a break whose every producer and consumer ships together (a shape tightened to what
    all of them already send); the file lives beside the contracts so review sees both.
    """
    path = repo / ACKNOWLEDGED
    if not path.is_file():
        return {}
    found = {}
    for raw in path.read_text().splitlines():
        line, _, why = raw.partition("  # ")
        if line.strip() and not line.lstrip().startswith("#"):
            if not why.strip():
                raise SystemExit(f"check-contracts: {ACKNOWLEDGED}: say why after '  # ': {raw!r}")
            found[line.strip()] = why.strip()
    return found


# --- command line ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", metavar="REF", help="the git revision to compare with")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout (default: this one)")
    parser.add_argument("--dump", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    try:
        if opts.dump:
            json.dump(dump(), sys.stdout)
            return 0
        if not opts.against:
            parser.error("--against REF is required")
        old, new = read_both(opts.repo.resolve(), opts.against)
    except CheckError as exc:
        print(f"check-contracts: {exc}", file=sys.stderr)
        return 2
    breaking, additive = compare(old, new)
    accepted = acknowledged(opts.repo.resolve())
    for line in [b for b in breaking if b in accepted]:
        print(f"ACKNOWLEDGED {line}  ({accepted[line]})")
        breaking.remove(line)
    if breaking:
        for line in breaking:
            print(f"BREAKING {line}")
        n = len(breaking)
        print(f"contracts incompatible with {opts.against}: {n} breaking change{'s' * (n != 1)}")
        return 1
    n, m = len(new["tasks"]), len(additive)
    print(f"contracts compatible with {opts.against}: {n} tasks, {m} additive changes")
    for line in additive:
        print(f"  additive {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

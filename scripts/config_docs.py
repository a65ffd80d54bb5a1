"""The configuration reference in docs/configuration.md, generated from the settings classes.

`./scripts/config-docs` rewrites the table between the two markers; `--check` exits 1 when the
file differs from what it would write (CI runs it, and scripts/tests/test_config_docs.py does the
same in-process). One row per field: the environment variable (the prefix plus the upper-cased
field name, as pydantic-settings reads it), its default (never a secret's) and its description.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from common.settings import Settings
from emails.config import MailSettings
from payments.config import PaymentSettings
from sync.config import CrmSettings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: scripts/config-docs (edit the settings' descriptions, then run it) -->"
END = "<!-- END GENERATED -->"
COMMAND = "./scripts/config-docs"

# Each settings class, under the heading its section gets.
SOURCES: list[tuple[str, type[BaseSettings]]] = [
    ("Every process (`common.settings.Settings`)", Settings),
    ("The emails service (`emails.config.MailSettings`)", MailSettings),
    ("The payments service (`payments.config.PaymentSettings`)", PaymentSettings),
    ("The sync service (`sync.config.CrmSettings`)", CrmSettings),
]
# Defaults computed at start-up, which would differ from machine to machine if evaluated here.
COMPUTED_DEFAULTS: dict[tuple[type[BaseSettings], str], str] = {
    (Settings, "data_dir"): "`./var` (in the working directory)"
}


class StaleError(Exception):
    """The document's generated part is not what the settings would give."""


def env_name(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return alias.upper()
    return f"{cls.model_config.get('env_prefix', '')}{name}".upper()


def _flatten(annotation: Any) -> list[Any]:
    """The members of a union (`X | None`), an `Annotated` unwrapped, else the annotation itself."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _flatten(arg)]
    return [annotation]


def is_secret(field: FieldInfo) -> bool:
    return SecretStr in _flatten(field.annotation)


def choices(field: FieldInfo) -> list[str]:
    return [
        str(value)
        for member in _flatten(field.annotation)
        if typing.get_origin(member) is Literal
        for value in typing.get_args(member)
    ]


def default_text(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    if is_secret(field):
        return "(secret)"
    if (cls, name) in COMPUTED_DEFAULTS:
        return COMPUTED_DEFAULTS[(cls, name)]
    if field.default_factory is not None:
        return "(computed)"
    default = field.default
    if default is PydanticUndefined:
        return "(required)"
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, list):
        return f"`{json.dumps(default)}`"
    if default == "":
        return "empty"
    return f"`{default}`"


def description_text(env: str, field: FieldInfo) -> str:
    text = " ".join((field.description or "").split())
    text = text.removeprefix(f"{env}: ")  # a description that starts by naming its variable
    text = text[:1].upper() + text[1:]
    if field_choices := choices(field):
        text = f"{text} One of: {', '.join(f'`{c}`' for c in field_choices)}.".strip()
    if is_secret(field):
        text = f"{text} Secret: never logged or shown.".strip()
    # Markdown: `|` ends a cell, `<service>` reads as an HTML tag, `*` may start emphasis.
    for char in "|<*":
        text = text.replace(char, "\\" + char)
    return text


def render() -> str:
    """The generated part, markers included."""
    lines = [BEGIN, ""]
    for heading, cls in SOURCES:
        lines += [f"### {heading}", "", "| variable | default | what |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            env = env_name(cls, name, field)
            default = default_text(cls, name, field)
            lines.append(f"| `{env}` | {default} | {description_text(env, field)} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def shown(path: Path) -> str:
    """`path` as a message names it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def expected(text: str, path: Path = DOC) -> str:
    """`text` with its generated part replaced by what the settings give now."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise StaleError(f"{shown(path)}: the markers {BEGIN!r} and {END!r} are missing")
    return text[:start] + render() + text[end + len(END) :]


def check(path: Path = DOC) -> None:
    """Raise `StaleError`, with a diff, when `path` is not what `./scripts/config-docs` writes."""
    current = path.read_text()
    wanted = expected(current, path)
    if current != wanted:
        diff = difflib.unified_diff(
            current.splitlines(), wanted.splitlines(), shown(path), "generated", lineterm=""
        )
        raise StaleError(
            f"{shown(path)} is stale: the settings changed since it was generated. "
            f"Run {COMMAND} and commit the result.\n" + "\n".join(list(diff)[:60])
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            check()
            print(f"{shown(DOC)}: up to date")
            return 0
        wanted = expected(DOC.read_text())
    except StaleError as exc:
        print(exc, file=sys.stderr)
        return 1
    if wanted != DOC.read_text():
        DOC.write_text(wanted)
        print(f"{shown(DOC)}: rewritten")
    else:
        print(f"{shown(DOC)}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

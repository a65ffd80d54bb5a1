"""docs/configuration.md's reference is what the settings classes generate (./scripts/config-docs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from scripts import config_docs


def test_the_configuration_reference_is_up_to_date() -> None:
    # The same check as `./scripts/config-docs --check` (CI): fails with a diff and the command to run.
    config_docs.check()


def test_every_settings_field_has_a_row() -> None:
    text = config_docs.DOC.read_text()
    for _heading, cls in config_docs.SOURCES:
        for name, field in cls.model_fields.items():
            assert f"| `{config_docs.env_name(cls, name, field)}` |" in text


def test_a_stale_document_is_refused_with_the_command_to_run(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    text = config_docs.DOC.read_text()
    stale.write_text(text.replace("| `REDIS_URL` |", "| `REDIS_URI` |"))
    with pytest.raises(config_docs.StaleError, match=r"Run \./scripts/config-docs"):
        config_docs.check(stale)


def test_missing_markers_are_an_error(tmp_path: Path) -> None:
    bare = tmp_path / "configuration.md"
    bare.write_text("# Configuration\n")
    with pytest.raises(config_docs.StaleError, match="markers"):
        config_docs.check(bare)


class Example(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EX_")

    token: SecretStr = Field(SecretStr("hunter2"), description="A token.")
    mode: str = Field("fast", description="How | fast.")
    size: int | None = Field(None, description="EX_SIZE: bytes for <service>.")


def test_rows_name_the_variable_and_never_a_secret_default() -> None:
    fields = Example.model_fields
    assert config_docs.env_name(Example, "token", fields["token"]) == "EX_TOKEN"
    assert config_docs.default_text(Example, "token", fields["token"]) == "(secret)"
    assert "hunter2" not in config_docs.description_text("EX_TOKEN", fields["token"])
    assert config_docs.default_text(Example, "mode", fields["mode"]) == "`fast`"
    assert config_docs.description_text("EX_MODE", fields["mode"]) == "How \\| fast."
    assert config_docs.default_text(Example, "size", fields["size"]) == "unset"
    assert config_docs.description_text("EX_SIZE", fields["size"]) == "Bytes for \\<service>."

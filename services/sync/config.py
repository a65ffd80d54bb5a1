"""The sync service's own setting, read from the environment like `common.settings`."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import SettingsError
from contracts.declare import parse_rate


def _rate(text: str | None) -> str | None:
    return None if text is None or not text.strip() else str(parse_rate(text))


class SyncSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", case_sensitive=False, extra="ignore")

    rate_limit: Annotated[str | None, AfterValidator(_rate)] = Field(
        None,
        description="CRM_RATE_LIMIT: the CRM account's API limit, `N/s` or `N/m`, shared by every "
        "sync worker of every host: at most N CRM calls start in any such window; a sync over it "
        "waits in the delayed set, holding no thread. Unset: no limit.",
    )


def load_sync_settings() -> SyncSettings:
    """Read the environment; raise `SettingsError` naming the variable, like `common.settings`."""
    try:
        return SyncSettings()
    except ValidationError as exc:
        lines = [
            f"  CRM_{str(e['loc'][0]).upper()}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        raise SettingsError("Invalid configuration (environment variables):\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_sync_settings() -> SyncSettings:
    return load_sync_settings()

"""The sync service's own settings: the CRM it writes doctors to (CRM_URL, CRM_API_TOKEN, CRM_TIMEOUT,
CRM_RATE_LIMIT).

Only this service talks to the CRM, so only its worker reads, and refuses in production,
these variables (`common.settings.ServiceSettings`).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, AnyUrl, Field, PositiveFloat, SecretStr
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings, load_service_settings
from contracts.declare import parse_rate


def _rate(text: str | None) -> str | None:
    return None if text is None or not text.strip() else str(parse_rate(text))


class CrmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_")
    url_fields = ("url",)

    url: AnyUrl = Field(AnyUrl("http://127.0.0.1:8701"), description="The CRM's API; https:// in production.")
    api_token: SecretStr = Field(SecretStr(""), description="Token for the CRM's API.")
    timeout: PositiveFloat = Field(30, description="Seconds a CRM request may take.")
    rate_limit: Annotated[str | None, AfterValidator(_rate)] = Field(
        None,
        description="CRM_RATE_LIMIT: the CRM account's API limit, `N/s` or `N/m`, shared by every "
        "sync worker of every host: at most N CRM calls start in any such window; a sync over it "
        "waits in the delayed set, holding no thread. Unset: no limit.",
    )

    def production_problems(self) -> Iterator[str]:
        if self.url.scheme != "https":
            yield "CRM_URL: must be an https:// URL in production (CRM_API_TOKEN would travel in clear)"


def load_crm_settings() -> CrmSettings:
    """Read the environment; `SettingsError` naming each wrong (in production, each unsafe) variable."""
    return load_service_settings(CrmSettings)


@lru_cache(maxsize=1)
def get_crm_settings() -> CrmSettings:
    return load_crm_settings()

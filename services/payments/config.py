"""The payments service's own settings (PAYMENT_*): the gateway it charges through, and reconciling.

Only this service talks to the payment gateway, so only its worker reads, and refuses in
production, these variables (`common.settings.ServiceSettings`).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, AnyUrl, Field, PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings, load_service_settings
from contracts.declare import parse_rate


def _rate(text: str | None) -> str | None:
    return None if text is None or not text.strip() else str(parse_rate(text))


class PaymentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENT_")
    url_fields = ("gateway_url",)

    gateway_url: AnyUrl = Field(
        AnyUrl("http://127.0.0.1:8702"), description="The payment gateway's API; https:// in production."
    )
    gateway_api_key: SecretStr = Field(SecretStr(""), description="Key for the payment gateway's API.")
    gateway_timeout: PositiveFloat = Field(30, description="Seconds a gateway request may take.")
    reconcile_after: PositiveInt = Field(
        300,
        description="PAYMENT_RECONCILE_AFTER: seconds a payment may stay pending/processing before "
        "the reconcile job asks the gateway about it. Keep it well above the gateway timeout, "
        "so a live worker's charge is never second-guessed.",
    )
    gateway_rate_limit: Annotated[str | None, AfterValidator(_rate)] = Field(
        None,
        description="PAYMENT_GATEWAY_RATE_LIMIT: the payment gateway account's API limit, `N/s` or "
        "`N/m`, shared by every payments worker of every host: at most N gateway calls start in "
        "any such window; a payment over it waits in the delayed set, holding no thread. Unset: "
        "no limit.",
    )

    def production_problems(self) -> Iterator[str]:
        if self.gateway_url.scheme != "https":
            yield (
                "PAYMENT_GATEWAY_URL: must be an https:// URL in production "
                "(PAYMENT_GATEWAY_API_KEY would travel in clear)"
            )


def load_payment_settings() -> PaymentSettings:
    """Read the environment; `SettingsError` naming each wrong (in production, each unsafe) variable."""
    return load_service_settings(PaymentSettings)


@lru_cache(maxsize=1)
def get_payment_settings() -> PaymentSettings:
    return load_payment_settings()

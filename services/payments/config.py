"""The payments service's own settings (PAYMENT_*): the gateway it charges through, and reconciling.

Only this service talks to the payment gateway, so only its worker reads, and refuses in
production, these variables (`common.settings.ServiceSettings`).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

from pydantic import AnyUrl, Field, PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings, load_service_settings


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

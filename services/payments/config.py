"""The payments service's own settings, read from the environment like `common.settings`."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, Field, PositiveInt, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import SettingsError
from contracts.declare import parse_rate


def _rate(text: str | None) -> str | None:
    return None if text is None or not text.strip() else str(parse_rate(text))


class PaymentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENT_", case_sensitive=False, extra="ignore")

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


def load_payment_settings() -> PaymentSettings:
    """Read the environment; raise `SettingsError` naming the variable, like `common.settings`."""
    try:
        return PaymentSettings()
    except ValidationError as exc:
        lines = [
            f"  PAYMENT_{str(e['loc'][0]).upper()}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        ]
        raise SettingsError("Invalid configuration (environment variables):\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_payment_settings() -> PaymentSettings:
    return load_payment_settings()

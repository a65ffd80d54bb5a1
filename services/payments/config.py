"""The payments service's own setting, read from the environment like `common.settings`."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, PositiveInt, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import SettingsError


class PaymentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENT_", case_sensitive=False, extra="ignore")

    reconcile_after: PositiveInt = Field(
        300,
        description="PAYMENT_RECONCILE_AFTER: seconds a payment may stay pending/processing before "
        "the reconcile job asks the gateway about it. Keep it well above the gateway timeout, "
        "so a live worker's charge is never second-guessed.",
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

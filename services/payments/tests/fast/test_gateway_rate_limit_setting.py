"""PAYMENT_GATEWAY_RATE_LIMIT: read, normalised, and refused by name."""

from __future__ import annotations

import pytest

from common.settings import SettingsError
from payments.config import load_payment_settings


def test_unset_means_no_limit_and_a_rate_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYMENT_GATEWAY_RATE_LIMIT", raising=False)
    assert load_payment_settings().gateway_rate_limit is None
    monkeypatch.setenv("PAYMENT_GATEWAY_RATE_LIMIT", "25/S")
    assert load_payment_settings().gateway_rate_limit == "25/s"


def test_a_wrong_rate_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENT_GATEWAY_RATE_LIMIT", "25 per second")
    with pytest.raises(SettingsError, match=r"PAYMENT_GATEWAY_RATE_LIMIT: .*write N/s or N/m"):
        load_payment_settings()

"""CRM_RATE_LIMIT and PAYMENT_GATEWAY_RATE_LIMIT: read, normalised, and refused by name."""

from __future__ import annotations

import pytest

from common.settings import SettingsError
from sync.config import load_sync_settings


def test_unset_or_empty_means_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRM_RATE_LIMIT", raising=False)
    assert load_sync_settings().rate_limit is None
    monkeypatch.setenv("CRM_RATE_LIMIT", " ")
    assert load_sync_settings().rate_limit is None


def test_a_rate_is_read_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_RATE_LIMIT", " 300 / M")
    assert load_sync_settings().rate_limit == "300/m"


@pytest.mark.parametrize("value", ["5", "5/h", "0/s", "lots"])
def test_a_wrong_rate_names_the_variable_and_what_it_takes(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CRM_RATE_LIMIT", value)
    with pytest.raises(SettingsError, match=r"CRM_RATE_LIMIT: .*write N/s or N/m"):
        load_sync_settings()

"""The payments service's gateway settings (payments.config.PaymentSettings): PAYMENT_GATEWAY_URL,
PAYMENT_GATEWAY_API_KEY, PAYMENT_GATEWAY_TIMEOUT, the variables users set before the move.

Used by the gateway client as set, and refused in production with the same line when the key
would travel in clear.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from common.settings import SettingsError, load_service_settings
from devtools.testing.edges import FakeGateway, mount
from payments import gateway
from payments.config import PaymentSettings, get_payment_settings, load_payment_settings

VARIABLES = ("PAYMENT_GATEWAY_URL", "PAYMENT_GATEWAY_API_KEY", "PAYMENT_GATEWAY_TIMEOUT")


@pytest.fixture
def gateway_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set PAYMENT_* for one test; the service's cached settings are read afresh around it."""
    get_payment_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_payment_settings.cache_clear()


def test_the_gateway_client_calls_the_configured_url_with_the_configured_key(gateway_env) -> None:
    gateway_env.setenv("PAYMENT_GATEWAY_URL", "http://gateway-elsewhere.fast.invalid")
    gateway_env.setenv("PAYMENT_GATEWAY_API_KEY", "sk-hunter2")
    fake = FakeGateway()
    unmount = mount("http://gateway-elsewhere.fast.invalid", fake.http)
    try:
        made = gateway.charge(
            amount=Decimal("12.50"), currency="EUR", customer_id="cus_1", idempotency_key="k1"
        )
    finally:
        unmount()
    assert made.id == "ch_1"
    (call,) = fake.calls
    assert (call.path, call.headers["Authorization"]) == ("/v1/charges", "Bearer sk-hunter2")


def test_the_defaults_and_a_wrong_timeout_named(gateway_env) -> None:
    for name in VARIABLES:
        gateway_env.delenv(name, raising=False)
    s = load_payment_settings()
    assert (str(s.gateway_url), s.gateway_api_key.get_secret_value(), s.gateway_timeout) == (
        "http://127.0.0.1:8702/",
        "",
        30,
    )
    gateway_env.setenv("PAYMENT_GATEWAY_TIMEOUT", "-1")
    with pytest.raises(SettingsError) as err:
        load_payment_settings()
    assert str(err.value).splitlines()[1].startswith("  PAYMENT_GATEWAY_TIMEOUT: ")


def test_plain_http_is_refused_in_production_in_one_line(gateway_env) -> None:
    gateway_env.setenv("PAYMENT_GATEWAY_URL", "http://gw:gw-hunter2@gateway.example")
    with pytest.raises(SettingsError) as err:
        load_service_settings(PaymentSettings, environment="production")
    assert str(err.value).splitlines() == [
        "Invalid configuration (environment variables):",
        "  PAYMENT_GATEWAY_URL: must be an https:// URL in production "
        "(PAYMENT_GATEWAY_API_KEY would travel in clear)",
    ]
    assert load_service_settings(PaymentSettings, environment="development").gateway_url.scheme == "http"
    gateway_env.setenv("PAYMENT_GATEWAY_URL", "https://gateway.example")
    assert load_service_settings(PaymentSettings, environment="production").gateway_url.scheme == "https"


def test_repr_shows_neither_the_key_nor_a_url_password(gateway_env) -> None:
    gateway_env.setenv("PAYMENT_GATEWAY_URL", "https://gw:gw-hunter2@gateway.example/")
    gateway_env.setenv("PAYMENT_GATEWAY_API_KEY", "sk-hunter2")
    s = load_payment_settings()
    assert "hunter2" not in repr(s) + str(s)
    assert "gateway_url='https://gw:***@gateway.example/'" in repr(s)

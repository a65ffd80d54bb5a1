"""Outbound sessions read the environment once, with requests' own meaning of it."""

from __future__ import annotations

import pytest

from common import http


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "_sessions", {})
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_proxies_are_those_requests_would_use_for_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "gateway.internal")
    assert http.session_for("https://crm.example.com").proxies.get("https") == "http://proxy.internal:3128"
    assert not http.session_for("https://gateway.internal").proxies.get("https"), "NO_PROXY ignored"


def test_a_ca_bundle_from_the_environment_verifies_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/internal-ca.pem")
    assert http.session_for("https://crm.internal").verify == "/etc/ssl/internal-ca.pem"


def test_one_session_per_base_url_keeps_a_thread_pools_worth_of_connections() -> None:
    first = http.session_for("https://crm.example.com")
    assert http.session_for("https://crm.example.com") is first
    assert http.session_for("https://pay.example.com") is not first
    assert first.get_adapter("https://crm.example.com/x")._pool_maxsize >= 32

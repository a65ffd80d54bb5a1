"""A service's own settings (`common.settings.ServiceSettings`) fail as `Settings` do.

One readable line per variable, named with the class's prefix, never echoing a value; URLs
masked in repr; `production_problems` refused only in production, all at once; and a worker
that loads them (`service_settings_or_exit`) stops in those lines instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import AnyUrl, Field, PositiveInt, SecretStr
from pydantic_settings import SettingsConfigDict

from common.settings import (
    ServiceSettings,
    SettingsError,
    get_settings,
    load_service_settings,
    reset_settings_cache,
    service_settings_or_exit,
)

# A production environment `Settings` itself accepts (as in test_production_settings.py).
PRODUCTION = {
    "ENVIRONMENT": "production",
    "DJANGO_SECRET_KEY": "k3y-" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_aBcDeFgHiJ",
    "DATABASE_URL": "postgres://jobs:db-hunter2@db.internal:5432/jobs",
    "REDIS_URL": "rediss://:redis-hunter2@redis.internal:6380/0",
    "ALLOWED_HOSTS": '["jobs.example.com"]',
}


class PeerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_PEER_")
    url_fields = ("url",)

    url: AnyUrl = Field(AnyUrl("http://127.0.0.1:9999"))
    token: SecretStr = Field(SecretStr(""))
    retries: PositiveInt = Field(3)

    def production_problems(self) -> Iterator[str]:
        if self.url.scheme != "https":
            yield "DEMO_PEER_URL: must be an https:// URL in production"
        if not self.token.get_secret_value():
            yield "DEMO_PEER_TOKEN: must be set in production"


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEMO_PEER_URL", "DEMO_PEER_TOKEN", "DEMO_PEER_RETRIES"):
        monkeypatch.delenv(name, raising=False)


def test_the_variables_are_read_with_the_class_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PEER_URL", "https://peer.example")
    monkeypatch.setenv("demo_peer_retries", "5")  # case-insensitive, as Settings
    s = load_service_settings(PeerSettings, environment="development")
    assert (str(s.url), s.retries) == ("https://peer.example/", 5)


def test_a_wrong_value_names_the_prefixed_variable_and_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PEER_RETRIES", "hunter2")
    monkeypatch.setenv("DEMO_PEER_URL", "not a url hunter2")
    with pytest.raises(SettingsError) as err:
        load_service_settings(PeerSettings, environment="development")
    lines = str(err.value).splitlines()
    assert lines[0] == "Invalid configuration (environment variables):"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["DEMO_PEER_URL", "DEMO_PEER_RETRIES"]
    assert "hunter2" not in str(err.value)


def test_production_problems_are_refused_in_production_only_and_all_at_once() -> None:
    assert load_service_settings(PeerSettings, environment="staging").retries == 3
    with pytest.raises(SettingsError) as err:
        load_service_settings(PeerSettings, environment="production")
    assert str(err.value).splitlines() == [
        "Invalid configuration (environment variables):",
        "  DEMO_PEER_URL: must be an https:// URL in production",
        "  DEMO_PEER_TOKEN: must be set in production",
    ]


def test_the_environment_is_environment_as_settings_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    try:
        with pytest.raises(SettingsError, match="DEMO_PEER_URL: must be an https://"):
            load_service_settings(PeerSettings)
        monkeypatch.setenv("DEMO_PEER_URL", "https://peer.example")
        monkeypatch.setenv("DEMO_PEER_TOKEN", "t0ken-hunter2")
        assert load_service_settings(PeerSettings).token.get_secret_value() == "t0ken-hunter2"
    finally:
        monkeypatch.undo()
        reset_settings_cache()
    assert get_settings().environment != "production"


def test_repr_and_str_mask_the_url_password_and_hide_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PEER_URL", "https://peer:url-hunter2@peer.example/api")
    monkeypatch.setenv("DEMO_PEER_TOKEN", "token-hunter2")
    s = load_service_settings(PeerSettings, environment="development")
    shown = repr(s) + str(s)
    assert "hunter2" not in shown
    assert "token-hunter2" not in s.model_dump_json()
    assert "url='https://peer:***@peer.example/api'" in shown
    assert str(s.url) == "https://peer:url-hunter2@peer.example/api"  # the value itself is intact


def test_a_worker_stops_in_the_same_lines_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PEER_RETRIES", "0")
    with pytest.raises(SystemExit) as stop:
        service_settings_or_exit(lambda: load_service_settings(PeerSettings, environment="development"))
    assert str(stop.value.code).splitlines() == [
        "Invalid configuration (environment variables):",
        "  DEMO_PEER_RETRIES: Input should be greater than 0",
    ]
    monkeypatch.setenv("DEMO_PEER_RETRIES", "4")
    service_settings_or_exit(lambda: load_service_settings(PeerSettings, environment="development"), list)

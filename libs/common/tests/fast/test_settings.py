"""Configuration errors name the variable; secrets never leak into output."""

import pytest

from common.celery_config import celery_config
from common.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENVIRONMENT", "DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_DEBUG"):
        monkeypatch.delenv(name, raising=False)


def test_the_documented_celery_values_are_the_defaults() -> None:
    conf = celery_config(load_settings())
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["timezone"] == "UTC" and conf["enable_utc"] is True
    assert conf["task_acks_late"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_reject_on_worker_lost"] is True
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (300, 600)
    assert conf["result_expires"] == 3600


def test_wrong_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://localhost:6379")
    monkeypatch.setenv("TASK_TIME_LIMIT", "ten minutes")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "REDIS_URL: must be a redis://" in message
    assert "TASK_TIME_LIMIT:" in message and "integer" in message


def test_missing_required_value_in_production_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgres://app@db/app")
    with pytest.raises(SettingsError, match="DJANGO_SECRET_KEY: must be set in production"):
        load_settings()


def test_inconsistent_time_limits_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASK_SOFT_TIME_LIMIT", "700")
    with pytest.raises(SettingsError, match="TASK_SOFT_TIME_LIMIT: must be below TASK_TIME_LIMIT"):
        load_settings()


def test_secrets_are_secretstr_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "hunter2-sentinel")
    monkeypatch.setenv("SENTRY_DSN", "https://hunter2-dsn@sentry.example/1")
    monkeypatch.setenv("FLOWER_PASSWORD", "hunter2-flower")
    settings = load_settings()
    assert settings.redis_sentinel_password is not None
    assert settings.redis_sentinel_password.get_secret_value() == "hunter2-sentinel"
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "hunter2" not in shown


def test_error_for_a_bad_url_does_not_echo_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://app:hunter2@db/app")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "DATABASE_URL" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_unauthenticated_endpoints_listen_on_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's /metrics has no login: it was open on every interface by default."""
    monkeypatch.delenv("METRICS_ADDRESS", raising=False)
    assert load_settings().metrics_address == "127.0.0.1"
    monkeypatch.setenv("METRICS_ADDRESS", "10.0.0.5")
    assert load_settings().metrics_address == "10.0.0.5"


def test_dead_letters_are_capped_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = celery_config(load_settings(), worker=True)["broker_transport_options"]
    assert conf["dead_letter_max_bytes"] == 64 * 1024 * 1024
    monkeypatch.setenv("DEAD_LETTER_MAX_BYTES", "0")
    with pytest.raises(SettingsError, match="DEAD_LETTER_MAX_BYTES"):
        load_settings()

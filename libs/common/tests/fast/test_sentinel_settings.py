"""REDIS_URL=sentinel://...: read once, refused clearly when incomplete, secrets never shown."""

from __future__ import annotations

import pytest

from common.celery_config import celery_config
from common.sentinel_urls import SentinelURL, SentinelURLError, parse_sentinel_url
from common.settings import SettingsError, load_settings

URL = "sentinel://:data%23pw@10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://10.0.0.3/2"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ENVIRONMENT",
        "REDIS_URL",
        "RESULT_BACKEND_URL",
        "REDIS_SENTINEL_MASTER",
        "REDIS_SENTINEL_PASSWORD",
        "DJANGO_SECRET_KEY",
        "DATABASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


def test_a_sentinel_url_is_read_kombu_s_way_with_the_database_and_password_given_once() -> None:
    target = parse_sentinel_url(URL)
    assert target == SentinelURL(
        (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)), db=2, password="data#pw"
    )
    assert "data#pw" not in repr(target)
    # kombu reads the credentials and the database from the first URL, Celery from the first too.
    assert target.kombu_url() == (
        "sentinel://:data%23pw@10.0.0.1:26379/2;sentinel://:data%23pw@10.0.0.2:26380/2;"
        "sentinel://:data%23pw@10.0.0.3:26379/2"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sentinel://a:1;redis://b:2", "part 2 of the sentinel URL is not sentinel://HOST:PORT"),
        ("sentinel://a:1/0;sentinel://b:2/1", "different databases"),
        ("sentinel://:x@a:1;sentinel://:y@b:2", "different credentials"),
        ("sentinel://a:1?ssl_ca_certs=/ca.pem", "TLS options (ssl_*) are not supported"),
        ("sentinel://a:1/zero", "is not a number"),
        ("sentinel://a:notaport", "invalid port"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(
        SentinelURLError, match=why.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
    ):
        parse_sentinel_url(url)


def test_a_sentinel_url_without_the_master_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", URL)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "REDIS_SENTINEL_MASTER: must be set when REDIS_URL is a sentinel:// URL" in message
    assert "data#pw" not in message and "data%23pw" not in message


def test_a_malformed_sentinel_url_names_the_variable_not_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "sentinel://:secret@a:1;sentinel://:other@b:2")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "jobs")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "REDIS_URL: the sentinel URL gives different credentials" in str(err.value)
    assert "secret" not in str(err.value) and "other" not in str(err.value)


def test_the_sentinel_password_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", URL)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "jobs")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-only-pw")
    s = load_settings()
    assert s.redis_sentinel_password is not None
    assert s.redis_sentinel_password.get_secret_value() == "sentinel-only-pw"
    for shown in (repr(s), str(s)):
        assert "sentinel-only-pw" not in shown and "data#pw" not in shown and "data%23pw" not in shown


def test_celery_config_selects_the_sentinel_transport_and_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", URL)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "jobs")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-only-pw")
    conf = celery_config(load_settings(), worker=True)
    assert conf["broker_url"] == parse_sentinel_url(URL).kombu_url()
    assert conf["result_backend"] == "common.transport.results:SentinelBackend+" + conf["broker_url"]
    for options in (conf["broker_transport_options"], conf["result_backend_transport_options"]):
        assert options["master_name"] == "jobs"
        assert options["sentinel_kwargs"] == {
            "socket_timeout": 3.0,
            "socket_connect_timeout": 3.0,
            "password": "sentinel-only-pw",
        }
    # Our reliable transport and result backend, not kombu's and Celery's stock ones.
    from kombu.transport import resolve_transport

    from common.transport.broker.sentinel import SentinelChannel, SentinelTransport
    from common.transport.broker.transport import Channel
    from common.transport.results import RedisBackend, SentinelBackend

    assert resolve_transport("sentinel") is SentinelTransport
    assert issubclass(SentinelChannel, Channel)
    assert issubclass(SentinelBackend, RedisBackend)


def test_production_needs_the_data_password_and_refuses_remote_sentinels_without_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("REDIS_URL", "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "jobs")
    with pytest.raises(SettingsError) as err:
        load_settings()
    line = next(line for line in str(err.value).splitlines() if "REDIS_URL" in line)
    assert "must authenticate in production" in line
    assert "sentinel:// has no TLS support" in line


def test_the_broker_url_shown_in_errors_hides_the_password() -> None:
    from common.masking import redact_url

    shown = redact_url(parse_sentinel_url(URL).kombu_url())
    assert "data" not in shown and shown.startswith("sentinel://:***@")


def test_every_redis_client_of_ours_follows_the_sentinels(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis_from_url (locks, the beat leader lock, the stores, metrics) on a sentinel:// URL:
    a client whose connections ask the sentinels for the primary, named by the settings."""
    from redis.sentinel import SentinelConnectionPool

    from common.settings import reset_settings_cache
    from common.transport.tls import redis_from_url

    monkeypatch.setenv("REDIS_URL", URL)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "jobs")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-only-pw")
    reset_settings_cache()
    try:
        client = redis_from_url(URL, socket_timeout=1.5, socket_connect_timeout=1.5)  # connects lazily
    finally:
        reset_settings_cache()
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "jobs"
    assert pool.connection_kwargs["password"] == "data#pw" and pool.connection_kwargs["db"] == 2
    manager = pool.sentinel_manager
    assert [s.connection_pool.connection_kwargs["port"] for s in manager.sentinels] == [26379, 26380, 26379]
    assert manager.sentinel_kwargs == {
        "socket_timeout": 1.5,
        "socket_connect_timeout": 1.5,
        "password": "sentinel-only-pw",
    }

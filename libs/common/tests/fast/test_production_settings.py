"""Production is secure by default: what would leak a secret or make one guessable is refused.

Each refusal is one line naming the variable and what to do, never echoing a value; the
development and test defaults are untouched. The process-level tests, which start a real Django
process with a production environment as a deployment would, are ../test_production_processes.py
(the fast tier starts no process).
"""

from __future__ import annotations

import pytest

from common.settings import DEV_SECRET_KEY, SettingsError, load_settings

GOOD_KEY = "k3y-" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_aBcDeFgHiJ"  # 52 characters, random-looking
# A production configuration that passes every check: each test breaks one thing.
PRODUCTION = {
    "ENVIRONMENT": "production",
    "DJANGO_SECRET_KEY": GOOD_KEY,
    "DATABASE_URL": "postgres://jobs:db-hunter2@db.internal:5432/jobs",
    "REDIS_URL": "rediss://:redis-hunter2@redis.internal:6380/0",
    "ALLOWED_HOSTS": '["jobs.example.com"]',
}
# Everything these tests set or the settings read that the session's environment may carry.
VARIABLES = {
    *PRODUCTION,
    "RESULT_BACKEND_URL",
    "DJANGO_DEBUG",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
}


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def refusal(mp: pytest.MonkeyPatch, **env: str | None) -> str:
    """The one error line for the production environment with `env` changed (None: unset)."""
    for name, value in env.items():
        if value is None:
            mp.delenv(name, raising=False)
        else:
            mp.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    lines = str(err.value).splitlines()
    assert lines[0] == "Invalid configuration (environment variables):"
    assert len(lines) == 2, lines
    return lines[1].strip()


def test_the_production_baseline_is_accepted(production: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.secure_ssl_redirect, s.secure_hsts_seconds, s.secure_proxy_ssl_header) == (
        True,
        365 * 24 * 3600,
        "X-Forwarded-Proto",
    )


def test_development_and_test_defaults_are_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for environment in ("development", "test", "staging"):
        s = load_settings(environment=environment)
        assert s.django_secret_key.get_secret_value() == DEV_SECRET_KEY
        assert s.database_url is None and s.redis_url == "redis://127.0.0.1:6379/0"
        assert (s.secure_ssl_redirect, s.secure_hsts_seconds, s.secure_proxy_ssl_header) == (False, 0, "")


@pytest.mark.parametrize(
    "key",
    [None, "", DEV_SECRET_KEY, "short-but-set", "django-insecure-" + "x1y2z3" * 9, "ab" * 30],
    ids=["unset", "empty", "dev-default", "short", "django-template", "five-distinct-chars"],
)
def test_a_weak_secret_key_is_refused(production: pytest.MonkeyPatch, key: str | None) -> None:
    line = refusal(production, DJANGO_SECRET_KEY=key)
    assert line.startswith("DJANGO_SECRET_KEY: must be set in production to at least 50 random characters")
    assert "secrets.token_urlsafe" in line
    if key:
        assert key not in line


@pytest.mark.parametrize("url", [None, "sqlite:////var/lib/jobs/db.sqlite3"], ids=["unset", "sqlite"])
def test_sqlite_is_refused_in_production(production: pytest.MonkeyPatch, url: str | None) -> None:
    assert refusal(production, DATABASE_URL=url).startswith(
        "DATABASE_URL: must be set to a postgres:// URL in production"
    )


@pytest.mark.parametrize(
    "peer",
    [
        {"CRM_URL": "http://crm.example"},
        {"PAYMENT_GATEWAY_URL": "http://gateway.example"},
        {"EMAIL_HOST": "smtp.example.com", "EMAIL_USE_TLS": "false"},
    ],
    ids=["crm", "gateway", "smtp"],
)
def test_a_service_peer_is_not_every_process_concern(production: pytest.MonkeyPatch, peer: dict) -> None:
    """The CRM, the gateway and the mail relay are checked by the one service that uses each
    (services/<svc>/config.py); the admin, beat and the other workers start without them."""
    for name, value in peer.items():
        production.setenv(name, value)
    load_settings()


@pytest.mark.parametrize(
    ("url", "wanted"),
    [
        ("redis://127.0.0.1:6379/0", ["must authenticate in production"]),
        ("rediss://redis.internal:6380/0", ["must authenticate in production"]),
        ("redis://:redis-hunter2@redis.internal:6379/0", ["must use TLS (rediss://)"]),
        ("redis://redis.internal:6379/0", ["must authenticate", "must use TLS (rediss://)"]),
        (
            "rediss://:redis-hunter2@redis.internal:6380/0?ssl_cert_reqs=none",
            ["must verify the Redis certificate"],
        ),
        ("rediss://:redis-hunter2@redis.internal:6380/0?ssl_cert_reqs=CERT_OPTIONAL", ["must verify"]),
        (
            "rediss://:redis-hunter2@redis.internal:6380/0?ssl_check_hostname=false",
            ["must check the Redis certificate's host name"],
        ),
        # A password holding an unencoded `#` must not hide a plain remote host from the check.
        ("redis://:redis#hunter2@redis.internal:6379/0", ["must use TLS (rediss://)"]),
    ],
)
def test_an_unsafe_redis_url_is_refused(production: pytest.MonkeyPatch, url: str, wanted: list[str]) -> None:
    for variable in ("REDIS_URL", "RESULT_BACKEND_URL"):
        line = refusal(production, **{variable: url})
        production.setenv(variable, PRODUCTION.get(variable, PRODUCTION["REDIS_URL"]))
        assert line.startswith(f"{variable}: ")
        assert all(part in line for part in wanted), line
        assert "hunter2" not in line and "redis.internal" not in line


@pytest.mark.parametrize(
    "url",
    [
        "redis://:redis-hunter2@127.0.0.1:6379/0",  # loopback: nothing crosses a network
        "redis://:redis-hunter2@[::1]:6379/0",
        "redis://jobs:redis-hunter2@localhost:6379/0",  # an ACL user
        "unix://:redis-hunter2@/run/redis/redis.sock",
        "rediss://jobs:redis-hunter2@redis.internal:6380/0?ssl_ca_certs=/etc/jobs/redis-ca.pem",
        "rediss://:redis-hunter2@redis.internal:6380/0?ssl_cert_reqs=required",
    ],
)
def test_an_authenticated_local_or_tls_redis_is_accepted(production: pytest.MonkeyPatch, url: str) -> None:
    production.setenv("REDIS_URL", url)
    assert load_settings().redis_url == url


def test_every_production_problem_is_listed_at_once(production: pytest.MonkeyPatch) -> None:
    production.setenv("DJANGO_SECRET_KEY", "too-short")
    production.setenv("REDIS_URL", "redis://redis.internal:6379/0")
    production.setenv("ALLOWED_HOSTS", '["*"]')
    with pytest.raises(SettingsError) as err:
        load_settings()
    names = [line.split(":")[0].strip() for line in str(err.value).splitlines()[1:]]
    assert names == ["DJANGO_SECRET_KEY", "REDIS_URL", "ALLOWED_HOSTS"]  # one line per variable


@pytest.mark.parametrize("value", ["jobs.example.com", "jobs.example.com,admin.example.com", "[jobs"])
def test_a_non_json_allowed_hosts_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ALLOWED_HOSTS", value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert str(err.value).splitlines()[1:] == [
        '  ALLOWED_HOSTS: must be a JSON list, e.g. ["jobs.example.com"]'
    ]


def test_allowed_hosts_star_is_refused_in_production(production: pytest.MonkeyPatch) -> None:
    assert refusal(production, ALLOWED_HOSTS='["*"]').startswith(
        "ALLOWED_HOSTS: must list the admin's host names"
    )


def test_repr_and_str_never_show_a_url_password(production: pytest.MonkeyPatch) -> None:
    production.setenv("REDIS_URL", "rediss://:redis#hunter2@[2001:db8::1]:6380/0")
    production.setenv("RESULT_BACKEND_URL", "rediss://jobs:results-hunter2@redis.internal:6380/1")
    s = load_settings()
    shown = repr(s) + str(s)
    assert "hunter2" not in shown
    assert "redis_url='rediss://:***@[2001:db8::1]:6380/0'" in shown
    assert "database_url='postgres://jobs:***@db.internal:5432/jobs'" in shown
    assert s.redis_url == "rediss://:redis#hunter2@[2001:db8::1]:6380/0"  # the value itself is intact


def test_a_refusal_never_echoes_a_password(production: pytest.MonkeyPatch) -> None:
    production.setenv("DATABASE_URL", "mysql://jobs:db-hunter2@db.internal/jobs")
    production.setenv("REDIS_URL", "redis://:redis-hunter2@redis.internal:6379/0")
    production.setenv("RESULT_BACKEND_URL", "http://:results-hunter2@redis.internal")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "DATABASE_URL" in str(err.value) and "RESULT_BACKEND_URL" in str(err.value)
    assert "hunter2" not in str(err.value)

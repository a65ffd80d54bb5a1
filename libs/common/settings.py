"""How configuration is read: a typed `Settings` from the environment, and the base of a service's own.

Every deployable (worker services, beat, flower, web) reads the variables of `Settings`; a
variable only one service reads (its peer's URL and secret, its mail relay) lives in that
service's `config.py` as a `ServiceSettings`, read by `load_service_settings`. Either way a
wrong value fails the same way: one readable error naming the variable, never echoing a secret.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from common.masking import redact_url, split_credentials
from common.sentinel_urls import SentinelURLError, is_sentinel_url, parse_sentinel_url

DEV_SECRET_KEY = "insecure-development-key-do-not-use-in-production"
# Django's own bar (`check --deploy`, security.W009): 50 characters, 5 distinct, not its template's.
SECRET_KEY_MIN_LENGTH = 50
GENERATE_SECRET_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
# Fields whose value is a URL that may carry a password: masked in repr() and str().
URL_FIELDS = ("redis_url", "result_backend_url", "database_url")
# Mail relays on this machine may be spoken to without TLS: nothing crosses a network.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

Pool = Literal["prefork", "threads", "solo", "gevent", "eventlet"]


class SettingsError(RuntimeError):
    """Configuration is wrong; the message names each offending variable."""


ERROR_HEADER = "Invalid configuration (environment variables):\n"
S = TypeVar("S", bound=BaseSettings)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
    )

    environment: Literal["development", "test", "staging", "production"] = Field(
        "development",
        description="production refuses to start unless the configuration is secure "
        "(docs/configuration.md, What production requires).",
    )
    # The release Sentry reports and a worker's `inspect stats` shows: JOBS_RELEASE, the
    # `<service>@<version>` that ./scripts/release freezes into each pex (`release_for`).
    jobs_release: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9_-]*@\S+$",
        description="<service>@<version>: Sentry's release and `release` in `inspect stats`; "
        "stamped into the pex by ./scripts/release (<service>@dev when built outside it).",
    )
    release: str | None = Field(None, description="A version alone: <service>@<RELEASE> if no JOBS_RELEASE.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of workers, beat and the web side."
    )

    # Broker and result backend: one Redis for every service.
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Broker, result backend and locks. In production with a password and, off-host, "
        "TLS: rediss://:PASSWORD@host:6380/0?ssl_ca_certs=/etc/jobs/redis-ca.pem (plus "
        "ssl_certfile/ssl_keyfile for client certificates); the certificate is always verified "
        "and must name the host. sentinel://... for Redis Sentinel.",
    )
    result_backend_url: str | None = Field(
        None,
        description="A Redis for results other than the broker's; unset: REDIS_URL. Gives up storing "
        "a SUCCESS and its ack in one step.",
    )
    # Redis Sentinel (common.transport.sentinel): REDIS_URL=sentinel://:PW@s1:26379;sentinel://s2:26379/0
    # names the sentinels (the password there is the data nodes'); these name the primary they
    # monitor and the sentinels' own password.
    redis_sentinel_master: str | None = Field(
        None, description="Name of the primary the sentinels monitor; required with a sentinel:// URL."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="The sentinels' own password (their requirepass), if they have one."
    )
    broker_heartbeat_timeout: PositiveFloat = Field(
        10,
        description="Seconds without a heartbeat before a worker process counts as dead and "
        "its in-flight tasks go back on their queues. Long tasks need no larger value.",
    )
    broker_socket_timeout: PositiveFloat = Field(
        3,
        description="Seconds any broker or result-store command may take before it fails: "
        "a hung Redis fails a send within a few of these, and the outbox keeps the task.",
    )
    dead_letter_cap: PositiveInt = Field(10_000, description="Dead letters kept per queue (oldest dropped).")
    dead_letter_retention: PositiveInt = Field(7 * 24 * 3600, description="Seconds a dead letter is kept.")
    dead_letter_max_bytes: PositiveInt = Field(
        64 * 1024 * 1024,
        description="Bytes the dead letters of one queue may take in Redis (oldest dropped); a "
        "message far over TASK_MAX_PAYLOAD_BYTES is kept as its first 4 KiB, size and digest.",
    )
    broker_connection_max_retries: PositiveInt | None = Field(
        100,
        description="Reconnection attempts after a worker loses the broker (2 s apart, growing to "
        "30 s: 100 is about 46 minutes, Celery's default) before it gives up and exits non-zero "
        "for its supervisor to restart it; 'forever' never gives up. 0 is refused: Celery would "
        "give up at the first failure.",
    )

    # Django
    database_url: str | None = Field(
        None, description="sqlite:// or postgres://; unset: SQLite in DATA_DIR. postgres:// in production."
    )
    # Seconds a worker thread keeps its database connection between tasks (0: reconnect for
    # every task, which cost a sync task a fifth of its CPU). A worker holds up to its
    # concurrency in connections; common.db_connections drops broken or expired ones.
    db_conn_max_age: NonNegativeInt = Field(
        60,
        description="Seconds a worker thread reuses its database connection; a worker holds up to "
        "its concurrency in connections.",
    )
    # Relative to where the process runs (a pex's files live elsewhere): ./var.
    data_dir: Path = Field(
        default_factory=lambda: Path.cwd() / "var",
        description="SQLite file, report files, stack logs, prefork metrics files.",
    )
    django_secret_key: SecretStr = Field(
        SecretStr(DEV_SECRET_KEY),
        description="Django's secret key; production needs at least 50 random characters.",
    )
    django_debug: bool = Field(False, description="Django's DEBUG; refused in production.")
    # JSON lists (`["jobs.example.com"]`); NoDecode: a malformed one is reported by
    # `_json_list` like any other wrong value, not by pydantic-settings' traceback.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        ["localhost", "127.0.0.1", "[::1]"],
        description='The admin hosts, a JSON list such as ["jobs.example.com"]; no "*" in production.',
    )
    csrf_trusted_origins: Annotated[list[str], NoDecode] = Field(
        [], description="Django's CSRF_TRUSTED_ORIGINS, a JSON list of origins (https://jobs.example.com)."
    )
    time_zone: str = Field("UTC", description="Django's TIME_ZONE.")

    # HTTPS for the admin (web.settings). Unset: on in production, off elsewhere (runserver and
    # the tests speak plain HTTP). See docs/configuration.md for the TLS proxy in front.
    secure_ssl_redirect: bool | None = Field(
        None, description="Redirect the admin to HTTPS (/healthz exempt); unset: on in production only."
    )
    secure_hsts_seconds: NonNegativeInt | None = Field(
        None, description="Strict-Transport-Security max-age; unset: a year in production, 0 elsewhere."
    )
    secure_hsts_include_subdomains: bool = Field(
        True, description="includeSubDomains in Strict-Transport-Security."
    )
    secure_hsts_preload: bool = Field(
        False, description="Consent to the browsers' preload list: a domain-wide decision, so opt-in."
    )
    secure_proxy_ssl_header: str | None = Field(
        None,
        description="Header by which the TLS proxy in front says a request came over HTTPS "
        "(X-Forwarded-Proto: https); unset: that one in production, none elsewhere; empty: none "
        "(TLS ends at gunicorn). The proxy must set it on every request and strip a client's own.",
    )
    admin_login_failure_limit: PositiveInt = Field(
        5,
        description="Failed admin logins for one username from one address before that pair is "
        "locked out for the cool-off (django-axes, web.settings).",
    )

    # Celery: the values our docs promise are the defaults.
    task_soft_time_limit: PositiveInt = Field(
        300, description="Seconds before SoftTimeLimitExceeded is raised in a task (prefork pool)."
    )
    task_time_limit: PositiveInt = Field(
        600, description="Seconds before a task's process is killed (prefork pool); above the soft limit."
    )
    result_expires: PositiveInt = Field(3600, description="Seconds a task's result is kept in Redis.")
    worker_prefetch_multiplier: PositiveInt = Field(
        1, description="Messages a worker process reserves per unit of concurrency."
    )
    report_progress_interval: PositiveFloat = Field(
        0.5, description="Seconds between PROGRESS updates: a poller sees movement, a big report pays ~0."
    )
    # Largest JSON-encoded args+kwargs `common.calls` sends (a task takes ids, not data).
    task_max_payload_bytes: PositiveInt = Field(
        1_048_576,
        description="Largest args+kwargs, as JSON, a producer may send (1 MiB): pass ids. Workers "
        "dead-letter larger messages.",
    )
    task_max_requeues: NonNegativeInt = Field(
        10,
        description="Times a message may go back on its queue (Reject(requeue=True), a recovery "
        "from a stopped worker, an unstarted prefetch given back) before it is dead-lettered "
        "with reason requeue-limit: a requeue loop ends by construction.",
    )
    worker_pool: Pool | None = Field(
        None, description="Overrides the pool the service declares (services/<name>/service.py)."
    )
    worker_concurrency: PositiveInt | None = Field(
        None, description="Overrides the concurrency the service declares (services/<name>/service.py)."
    )
    # Remote control commands workers obey beyond the read-only default (common.remote_control), comma
    # separated, e.g. "shutdown,pool_restart"; "*" obeys all (Celery's default).
    worker_remote_control_allow: str = Field(
        "",
        description="Remote control commands workers obey beyond the read-only default, comma "
        "separated (shutdown,pool_restart); * obeys all (Celery's default).",
    )

    # Operations
    sentry_dsn: SecretStr | None = Field(None, description="Sentry project DSN; unset: no Sentry.")
    sentry_traces_sample_rate: float = Field(
        0.1, ge=0, le=1, description="Share of transactions Sentry traces (0 to 1)."
    )
    flower_user: str = Field("admin", description="Flower's basic-auth user.")
    flower_password: SecretStr | None = Field(
        None, description="Flower's basic-auth password; Flower refuses to start without it."
    )
    flower_address: str = Field("127.0.0.1", description="Interface Flower listens on.")
    flower_port: PositiveInt = Field(5555, description="Port Flower listens on.")

    @field_validator("redis_url", "result_backend_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and is_sentinel_url(value):
            try:
                parse_sentinel_url(value)
            except SentinelURLError as exc:
                raise ValueError(str(exc)) from None
        elif value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss://, unix:// or sentinel:// URL")
        return value

    @model_validator(mode="after")
    def _sentinel_names_its_primary(self) -> Settings:
        names = ("redis_url", "result_backend_url")
        sentinel = [n.upper() for n in names if is_sentinel_url(getattr(self, n))]
        if sentinel and not (self.redis_sentinel_master or "").strip():
            raise ValueError(
                f"REDIS_SENTINEL_MASTER: must be set when {' and '.join(sentinel)} is a sentinel:// URL "
                "(the name the sentinels monitor, as in their `sentinel monitor NAME ...` line)"
            )
        return self

    @field_validator("allowed_hosts", "csrf_trusted_origins", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list):
            raise ValueError('must be a JSON list, e.g. ["jobs.example.com"]')
        return parsed

    @field_validator("secure_proxy_ssl_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"[A-Za-z0-9-]+", value):
            raise ValueError("must be a header name such as X-Forwarded-Proto (empty: none)")
        return value

    @field_validator("broker_connection_max_retries", mode="before")
    @classmethod
    def _forever_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "forever" else value

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite://", "postgres://", "postgresql://")):
            raise ValueError("must be a sqlite:// or postgres:// URL")
        return value

    @model_validator(mode="after")
    def _production_is_secure(self) -> Settings:
        """Production refuses what would send a secret in clear or make one guessable.

        All problems at once, one line per variable, none echoing a value.
        """
        if self.environment != "production":
            return self
        problems = list(self._production_problems())
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _production_problems(self) -> Iterator[str]:
        key = self.django_secret_key.get_secret_value()
        if (
            key == DEV_SECRET_KEY
            or len(key) < SECRET_KEY_MIN_LENGTH
            or len(set(key)) < 5
            or key.startswith("django-insecure-")
        ):
            yield (
                f"DJANGO_SECRET_KEY: must be set in production to at least {SECRET_KEY_MIN_LENGTH} "
                f"random characters; generate one with: {GENERATE_SECRET_KEY}"
            )
        if self.django_debug:
            yield "DJANGO_DEBUG: must be false in production"
        if self.database_url is None or self.database_url.startswith("sqlite:"):
            yield "DATABASE_URL: must be set to a postgres:// URL in production (SQLite is for development)"
        for name in ("redis_url", "result_backend_url"):
            url = getattr(self, name)
            if url is not None:
                yield from _redis_problems(name.upper(), url)
        if "*" in self.allowed_hosts:
            yield 'ALLOWED_HOSTS: must list the admin\'s host names in production, not "*"'

    @model_validator(mode="after")
    def _time_limits_ordered(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError(
                "TASK_SOFT_TIME_LIMIT: must be below TASK_TIME_LIMIT "
                f"({self.task_soft_time_limit} >= {self.task_time_limit})"
            )
        return self

    def release_for(self, service: str) -> str:
        """`service`'s release string: JOBS_RELEASE, else `<service>@<RELEASE>`, else `<service>@dev`.

        One string everywhere (the pex, its git tag, Sentry, `inspect stats`), so an error
        or a worker can be traced to the build that produced it.
        """
        return self.jobs_release or f"{service}@{self.release or 'dev'}"

    @model_validator(mode="after")
    def _https_defaults(self) -> Settings:
        """Fill the unset HTTPS settings: on in production, off elsewhere."""
        production = self.environment == "production"
        if self.secure_ssl_redirect is None:
            self.secure_ssl_redirect = production
        if self.secure_hsts_seconds is None:
            self.secure_hsts_seconds = 365 * 24 * 3600 if production else 0
        if self.secure_proxy_ssl_header is None:
            self.secure_proxy_ssl_header = "X-Forwarded-Proto" if production else ""
        return self

    def __repr_args__(self) -> Any:
        return _masked_repr_args(super().__repr_args__(), URL_FIELDS)

    @property
    def results_url(self) -> str:
        return self.result_backend_url or self.redis_url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'db.sqlite3'}"

    # Observability (common.observability.metrics, .logging_config).
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None,
        description="Port a worker serves Prometheus /metrics on (at METRICS_ADDRESS); unset, empty "
        "or 0: no endpoint. One port per worker process on a host.",
    )
    metrics_address: str = Field(
        "127.0.0.1",
        description="Interface the /metrics endpoint listens on: loopback unless set (it has no "
        "authentication); 0.0.0.0 or a private address where Prometheus scrapes from another host.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per log line (python-json-logger), for a log shipper."
    )

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _zero_port_is_off(cls, value: Any) -> Any:
        return None if value in (0, "0", "") or (isinstance(value, str) and not value.strip()) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def _masked_repr_args(args: Iterable[tuple[str | None, Any]], url_fields: Iterable[str]) -> Any:
    # A URL's password never reaches repr()/str() (logs, tracebacks, a debugger's display),
    # in any form: userinfo, `?password=`, each sentinel's; nor one in any other text field.
    url_fields = frozenset(url_fields)
    for name, value in args:
        if name in url_fields and value is not None:
            value = redact_url(str(value))
        elif isinstance(value, str) and ("://" in value or "=" in value):
            value = redact_url(value)
        yield name, value


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine: a peer there is reached without crossing a network."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redis_problems(variable: str, url: str) -> Iterator[str]:
    """What production refuses in a Redis URL, as one line (no part of the URL is shown)."""
    if is_sentinel_url(url):
        yield from _sentinel_problems(variable, url)
        return
    prefix, userinfo, rest = split_credentials(url)
    # Parsed without its credentials: a password with `#`, `/` or `?` cannot shift the host.
    parts = urlsplit(prefix + rest)
    query = {key.lower(): value.strip().lower() for key, value in parse_qsl(parts.query)}
    password = (userinfo or "").partition(":")[2] or query.get("password", "")
    wrong = []
    if not password:
        wrong.append(
            "must authenticate in production: give the password in the URL "
            "(redis://:PASSWORD@host/0, or USER:PASSWORD@ for an ACL user; percent-encode # / ? @)"
        )
    local = parts.scheme == "unix" or is_loopback(parts.hostname or "")
    if parts.scheme == "redis" and not local:
        wrong.append("must use TLS (rediss://) in production for a Redis that is not on this machine")
    if parts.scheme == "rediss":
        if query.get("ssl_cert_reqs", "required") not in ("required", "cert_required"):
            wrong.append(
                "must verify the Redis certificate in production: remove ssl_cert_reqs "
                "(give ssl_ca_certs=/path/to/ca.pem for a private CA)"
            )
        if query.get("ssl_check_hostname", "true") in ("false", "0", "no", "off"):
            wrong.append(
                "must check the Redis certificate's host name in production: remove ssl_check_hostname"
            )
    if wrong:
        yield f"{variable}: " + "; ".join(wrong)


def _sentinel_problems(variable: str, url: str) -> Iterator[str]:
    target = parse_sentinel_url(url)
    wrong = []
    if not target.password:
        wrong.append(
            "must authenticate in production: give the data nodes' password in the URL "
            "(sentinel://:PASSWORD@host:26379;..., percent-encode # / ? @)"
        )
    if not all(is_loopback(host) for host, _port in target.sentinels):
        wrong.append(
            "sentinel:// has no TLS support here: in production the sentinels and the data nodes "
            "must be on this machine, or use a rediss:// URL to one primary"
        )
    if wrong:
        yield f"{variable}: " + "; ".join(wrong)


def _describe(error: ValidationError, prefix: str = "") -> str:
    """One line per bad variable, without the offending input (it may be a secret)."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        loc = [str(part) for part in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if loc:
            name = f"{prefix}{loc[0]}".upper()
            lines.append(f"  {name}: {message}")
        else:
            lines.append(f"  {message}")
    return ERROR_HEADER + "\n".join(lines)


def _read(cls: type[S], **overrides: Any) -> S:
    """An instance of `cls` from the environment; `SettingsError` naming each wrong variable."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, prefix)) from None
    except SourceError as exc:
        # pydantic-settings could not decode a variable (its message names the field, never the value).
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"{prefix}{field.group(1)}".upper() if field else "a variable"
        raise SettingsError(f"{ERROR_HEADER}  {name}: could not be decoded (JSON expected)") from None


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; raise `SettingsError` naming every wrong variable."""
    return _read(Settings, **overrides)


class ServiceSettings(BaseSettings):
    """Settings only one service reads, kept in that service (`services/<svc>/config.py`).

    Read like `Settings` (same errors, URLs in `url_fields` masked in repr) by
    `load_service_settings`, which also refuses `production_problems` under
    ENVIRONMENT=production: a service checks its own peers' security, no other process does.
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)
    url_fields: ClassVar[tuple[str, ...]] = ()

    def production_problems(self) -> Iterator[str]:
        """One line per variable that production refuses, naming it; never a value."""
        return iter(())

    def __repr_args__(self) -> Any:
        return _masked_repr_args(super().__repr_args__(), self.url_fields)


T = TypeVar("T", bound=ServiceSettings)


def load_service_settings(cls: type[T], *, environment: str | None = None, **overrides: Any) -> T:
    """Read `cls` from the environment; `SettingsError` naming each wrong variable.

    In production (`environment`, else ENVIRONMENT as `Settings` reads it) the class's
    `production_problems` are refused too, all at once, in `load_settings`' format.
    """
    settings = _read(cls, **overrides)
    if (environment or get_settings().environment) == "production":
        problems = list(settings.production_problems())
        if problems:
            raise SettingsError(ERROR_HEADER + "\n".join(f"  {line}" for line in problems))
    return settings


def service_settings_or_exit(*loaders: Callable[[], object]) -> None:
    """Run each loader; a `SettingsError` stops the process in one line per variable (exit 1).

    A worker calls this before it starts, as `common.django_settings` does for `Settings`:
    no traceback, no value, only what to fix.
    """
    for load in loaders:
        try:
            load()
        except SettingsError as exc:
            raise SystemExit(str(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()

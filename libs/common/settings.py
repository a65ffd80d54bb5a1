"""The one place configuration is read: a typed `Settings` from the environment.

Every deployable (worker services, beat, flower, web) reads the same variables, so
a wrong value fails the same way everywhere: one readable error naming the variable,
never echoing a secret.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AnyUrl,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "insecure-development-key-do-not-use-in-production"

Pool = Literal["prefork", "threads", "solo", "gevent", "eventlet"]


class SettingsError(RuntimeError):
    """Configuration is wrong; the message names each offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        validate_default=True,
    )

    environment: Literal["development", "test", "staging", "production"] = "development"
    # The release Sentry reports and a worker's `inspect stats` shows: JOBS_RELEASE, the
    # `<service>@<version>` that ./scripts/release freezes into each pex (`release_for`).
    jobs_release: str | None = Field(None, pattern=r"^[a-z][a-z0-9_-]*@\S+$")
    release: str | None = Field(None, description="A version alone: <service>@<RELEASE> if no JOBS_RELEASE.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Broker and result backend: one Redis for every service.
    redis_url: str = "redis://127.0.0.1:6379/0"
    result_backend_url: str | None = None
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
    broker_connection_max_retries: PositiveInt | None = Field(
        100,
        description="Reconnection attempts after a worker loses the broker (2 s apart, growing to "
        "30 s: 100 is about 46 minutes, Celery's default) before it gives up and exits non-zero "
        "for its supervisor to restart it; 'forever' never gives up. 0 is refused: Celery would "
        "give up at the first failure.",
    )

    # Django
    database_url: str | None = None
    # Seconds a worker thread keeps its database connection between tasks (0: reconnect for
    # every task, which cost a sync task a fifth of its CPU). A worker holds up to its
    # concurrency in connections; common.db_connections drops broken or expired ones.
    db_conn_max_age: NonNegativeInt = 60
    # Relative to where the process runs (a pex's files live elsewhere): ./var.
    data_dir: Path = Field(default_factory=lambda: Path.cwd() / "var")
    django_secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)
    django_debug: bool = False
    allowed_hosts: list[str] = ["localhost", "127.0.0.1", "[::1]"]
    csrf_trusted_origins: list[str] = []
    time_zone: str = "UTC"

    # Celery: the chapter's values are the defaults.
    task_soft_time_limit: PositiveInt = 300
    task_time_limit: PositiveInt = 600
    result_expires: PositiveInt = 3600
    worker_prefetch_multiplier: PositiveInt = 1
    report_progress_interval: PositiveFloat = Field(
        0.5, description="Seconds between PROGRESS updates: a poller sees movement, a big report pays ~0."
    )
    # Largest JSON-encoded args+kwargs `common.calls` sends (a task takes ids, not data).
    task_max_payload_bytes: PositiveInt = 1_048_576
    worker_pool: Pool | None = None
    worker_concurrency: PositiveInt | None = None

    # Mail (Django's SMTP backend)
    email_host: str = "127.0.0.1"
    email_port: PositiveInt = 1025
    email_host_user: str = ""
    email_host_password: SecretStr = SecretStr("")
    email_use_tls: bool = False
    email_timeout: PositiveFloat = 30
    default_from_email: str = "noreply@example.com"
    admin_email: str = "admin@example.com"

    # External peers
    crm_url: AnyUrl = AnyUrl("http://127.0.0.1:8701")
    crm_api_token: SecretStr = SecretStr("")
    crm_timeout: PositiveFloat = 30
    payment_gateway_url: AnyUrl = AnyUrl("http://127.0.0.1:8702")
    payment_gateway_api_key: SecretStr = SecretStr("")
    payment_gateway_timeout: PositiveFloat = 30

    # Operations
    sentry_dsn: SecretStr | None = None
    sentry_traces_sample_rate: float = Field(0.1, ge=0, le=1)
    flower_user: str = "admin"
    flower_password: SecretStr | None = None
    flower_address: str = "127.0.0.1"
    flower_port: PositiveInt = 5555

    @field_validator("redis_url", "result_backend_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
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
    def _production_needs_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        if self.django_secret_key.get_secret_value() == DEV_SECRET_KEY:
            raise ValueError("DJANGO_SECRET_KEY: must be set in production")
        if self.django_debug:
            raise ValueError("DJANGO_DEBUG: must be false in production")
        if self.database_url is None:
            raise ValueError("DATABASE_URL: must be set in production (SQLite is for development)")
        return self

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

    @property
    def results_url(self) -> str:
        return self.result_backend_url or self.redis_url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'db.sqlite3'}"


def _describe(error: ValidationError) -> str:
    """One line per bad variable, without the offending input (it may be a secret)."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        loc = [str(part) for part in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if loc:
            name = loc[0].upper()
            lines.append(f"  {name}: {message}")
        else:
            lines.append(f"  {message}")
    return "Invalid configuration (environment variables):\n" + "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; raise `SettingsError` naming every wrong variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()

"""DJANGO_SETTINGS_MODULE for workers and beat; `web.settings` extends it for the admin."""

import dj_database_url

from common.observability.logging_config import logging_dict
from common.settings import get_settings

_s = get_settings()
_s.data_dir.mkdir(parents=True, exist_ok=True)

SECRET_KEY = _s.django_secret_key.get_secret_value()
DEBUG = _s.django_debug
ALLOWED_HOSTS = _s.allowed_hosts
CSRF_TRUSTED_ORIGINS = _s.csrf_trusted_origins

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_celery_beat",
    "common",
    "common.outbox",
]

DATABASES = {
    "default": dj_database_url.parse(
        _s.effective_database_url, conn_max_age=_s.db_conn_max_age, conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several worker processes share one file in development: wait for the write lock.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = _s.time_zone

EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = _s.email_host
EMAIL_PORT = _s.email_port
EMAIL_HOST_USER = _s.email_host_user
EMAIL_HOST_PASSWORD = _s.email_host_password.get_secret_value()
EMAIL_USE_TLS = _s.email_use_tls
EMAIL_TIMEOUT = _s.email_timeout
DEFAULT_FROM_EMAIL = _s.default_from_email

REPORTS_DIR = _s.data_dir / "reports"

LOGGING = logging_dict(_s.log_level)
ADMIN_EMAIL = _s.admin_email

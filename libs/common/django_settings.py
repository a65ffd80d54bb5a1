"""DJANGO_SETTINGS_MODULE for workers and beat; `web.settings` extends it for the admin."""

import dj_database_url

from common.observability.logging_config import logging_dict
from common.settings import SettingsError, get_settings

try:
    _s = get_settings()
except SettingsError as exc:
    # A process that cannot start says why, one line per variable, not in a traceback (exit 1).
    raise SystemExit(str(exc)) from None
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

# HTTPS (common.settings fills these in: on in production, off elsewhere). Only the admin
# (web.settings) serves HTTP, but they live here so every settings module built on this one,
# and `check --deploy` on it, is secure by default. Workers never run the middleware.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
SECURE_SSL_REDIRECT = _s.secure_ssl_redirect
# The health check answers on plain HTTP too (a load balancer may probe gunicorn directly).
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = _s.secure_hsts_seconds
SECURE_HSTS_INCLUDE_SUBDOMAINS = _s.secure_hsts_include_subdomains
SECURE_HSTS_PRELOAD = _s.secure_hsts_preload
# Behind a TLS proxy (the units bind gunicorn to 127.0.0.1): the proxy says the request came
# over HTTPS in this header, which it must set on every request, overwriting a client's own.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _s.secure_proxy_ssl_header.upper().replace("-", "_"), "https")
    if _s.secure_proxy_ssl_header
    else None
)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _s.environment == "production"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# security.W021 asks for the HSTS preload directive: consent to ship the whole domain in the
# browsers' preload list, which only its owner can give (SECURE_HSTS_PRELOAD=true).
SILENCED_SYSTEM_CHECKS = [] if _s.secure_hsts_preload else ["security.W021"]

USE_TZ = True
TIME_ZONE = _s.time_zone

# No EMAIL_*: only the emails service sends mail, with its own settings (emails.config).

REPORTS_DIR = _s.data_dir / "reports"

LOGGING = logging_dict(_s.log_level)

"""DJANGO_SETTINGS_MODULE of the web deployable: the common settings plus the admin."""

from __future__ import annotations

import ipaddress
import typing
from datetime import timedelta

from common.django_settings import *  # noqa: F403
from common.django_settings import INSTALLED_APPS, _s

if typing.TYPE_CHECKING:  # (a bare TYPE_CHECKING would become a setting)
    from django.http import HttpRequest

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    *INSTALLED_APPS,
    "axes",
    "web",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Saves made in a request send their tasks (a new doctor's welcome mail...): web/events.py.
    "web.events.EventsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its 429 response.
    "axes.middleware.AxesMiddleware",
]
ROOT_URLCONF = "web.urls"
WSGI_APPLICATION = "web.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"
STATIC_ROOT = _s.data_dir / "static"
# Serve the admin's assets from the installed apps without a collectstatic step.
WHITENOISE_USE_FINDERS = True
# HTTPS settings (SECURE_*, secure cookies) come from common.django_settings.

# Admin login throttling (django-axes; only the web side has logins, so only it installs axes:
# its tables come with `web.pex migrate`). A username that fails ADMIN_LOGIN_FAILURE_LIMIT
# times in a row from one address is refused there, right password or not (HTTP 429), for the
# cool-off; another username, or the same one from elsewhere, is not. A success resets the
# count. An operator unlocks early with `web.pex axes_reset_username <name>` (or the admin's
# "Access attempts" page).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair before any check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = _s.admin_login_failure_limit
# No start-up banner: every process with these settings (manage.py commands, probes) would print it.
AXES_VERBOSE = False
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True


def client_ip(request: HttpRequest) -> str | None:
    """The address a login attempt counts against (AXES_CLIENT_IP_CALLABLE).

    Behind the TLS proxy (SECURE_PROXY_SSL_HEADER set: production's default) every request
    comes from the proxy, so the client is the last X-Forwarded-For entry, the one the proxy
    itself appended or set; entries before it are the client's to invent (trusting the first
    would let an attacker rotate addresses and never be locked out). Without a proxy, or
    without the header, the peer address. axes' own AXES_IPWARE_* settings need the optional
    django-ipware package, which is not installed.
    """
    from django.conf import settings  # at call time: the settings module is still loading here

    peer = request.META.get("REMOTE_ADDR")
    if not settings.SECURE_PROXY_SSL_HEADER:
        return peer
    last = request.META.get("HTTP_X_FORWARDED_FOR", "").rpartition(",")[2].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return peer


AXES_CLIENT_IP_CALLABLE = client_ip

"""DJANGO_SETTINGS_MODULE of the web deployable: the common settings plus the admin."""

from __future__ import annotations

import ipaddress
import json
import os
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


def _trusted_proxies(value: str | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """TRUSTED_PROXIES: a JSON list of the addresses (or networks) of the proxies in front.

    Unset: this machine's loopback, where the systemd units' TLS proxy talks to gunicorn
    (bound to 127.0.0.1). `[]`: no proxy; X-Forwarded-For is never read. A process that
    cannot read it says so in one line and exits, as for any other variable.
    """
    if value is None or not value.strip():
        return tuple(ipaddress.ip_network(a) for a in ("127.0.0.1/32", "::1/128"))
    try:
        entries = json.loads(value)
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(value)
        return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)
    except ValueError:
        raise SystemExit(
            "Invalid configuration (environment variables):\n  TRUSTED_PROXIES: must be a JSON list "
            'of the proxies\' addresses or networks, e.g. ["172.30.0.10"] or ["10.0.0.0/24"] ([]: none)'
        ) from None


TRUSTED_PROXIES = _trusted_proxies(os.environ.get("TRUSTED_PROXIES"))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_ip(request: HttpRequest) -> str | None:
    """The address a login attempt counts against (AXES_CLIENT_IP_CALLABLE): what the proxy saw.

    X-Forwarded-For is read only from a peer in TRUSTED_PROXIES: anyone else (gunicorn reached
    without the proxy) could write any address there and rotate it to dodge the lockout, so
    their own address (REMOTE_ADDR) counts. From a trusted proxy the list is read from the
    right, the end each proxy appends to: the first address that is not itself a trusted
    proxy is the client; entries left of it are the client's to invent and never read. A
    malformed entry ends the walk at the last proxy. axes' own AXES_IPWARE_* settings need
    the optional django-ipware package, which is not installed.
    """
    from django.conf import settings  # at call time: tests override TRUSTED_PROXIES

    trusted = settings.TRUSTED_PROXIES

    def is_proxy(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in trusted)

    peer = request.META.get("REMOTE_ADDR")
    seen = _address(peer or "")
    if seen is None or not is_proxy(seen):
        return peer
    for entry in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        hop = _address(entry)
        if hop is None:
            break
        seen = hop
        if not is_proxy(hop):
            break
    return str(seen)


AXES_CLIENT_IP_CALLABLE = client_ip

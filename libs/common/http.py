"""Outbound HTTP from tasks (the CRM, the payment gateway): one pooled session per base URL.

requests re-reads the environment on every call of a plain session (proxy variables, NO_PROXY,
~/.netrc, CA-bundle variables): a twentieth of a CRM sync task's CPU in the I/O-bound
profile. Here it is read once per process and base URL, with the same meaning: proxies as
requests would pick them for that URL (NO_PROXY honoured), REQUESTS_CA_BUNDLE or
CURL_CA_BUNDLE for verification. Credentials come from settings, never from ~/.netrc.

The connection pool holds POOL_SIZE connections, so a threads pool of that many keeps each
one alive instead of opening and discarding sockets past requests' default of 10.
"""

from __future__ import annotations

import os
import threading

import requests
from requests.adapters import HTTPAdapter

POOL_SIZE = 64

_sessions: dict[tuple[int, str], requests.Session] = {}
_lock = threading.Lock()


def session_for(base_url: str) -> requests.Session:
    """This process's session for calls under `base_url` (a forked child makes its own)."""
    key = (os.getpid(), base_url)
    session = _sessions.get(key)
    if session is None:
        with _lock:
            session = _sessions.get(key)
            if session is None:
                session = _sessions[key] = _new_session(base_url)
    return session


def _new_session(base_url: str) -> requests.Session:
    session = requests.Session()
    session.proxies = requests.utils.get_environ_proxies(base_url)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False  # read above, once
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session

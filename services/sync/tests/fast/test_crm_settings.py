"""The sync service's own settings (sync.config.CrmSettings): CRM_URL, CRM_API_TOKEN, CRM_TIMEOUT.

Read from the same variables as before the move, used by the CRM client as set, and refused
in production with the same line when the token would travel in clear.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.models import Doctor
from common.settings import SettingsError, load_service_settings
from contracts import sync
from devtools.testing.edges import FakeCRM, mount
from sync.config import CrmSettings, get_crm_settings, load_crm_settings
from sync.crm import upsert_doctor

VARIABLES = ("CRM_URL", "CRM_API_TOKEN", "CRM_TIMEOUT")


@pytest.fixture
def crm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set CRM_* for one test; the service's cached settings are read afresh around it."""
    get_crm_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_crm_settings.cache_clear()


def test_the_crm_client_calls_the_configured_url_with_the_configured_token(crm_env) -> None:
    crm_env.setenv("CRM_URL", "http://crm-elsewhere.fast.invalid/")
    crm_env.setenv("CRM_API_TOKEN", "tok-hunter2")
    fake = FakeCRM()
    unmount = mount("http://crm-elsewhere.fast.invalid", fake.http)
    try:
        assert upsert_doctor(doctor_id=7, name="Ada L", email="ada@clinic.example") == "crm-7"
    finally:
        unmount()
    (call,) = fake.calls
    assert call.headers["Authorization"] == "Bearer tok-hunter2"
    assert call.path == "/api/doctors"


def test_a_sync_task_reaches_the_crm_fixture_at_the_configured_url(jobs, crm) -> None:
    d = Doctor.objects.create(first_name="Bo", last_name="R", email="bo@clinic.example")
    sync.sync_doctor_to_external_system.delay(d.pk)
    jobs.run_all()
    assert [c.path for c in crm.calls] == ["/api/doctors"]
    assert "Authorization" not in crm.calls[0].headers  # no token set: none sent


def test_the_defaults_and_a_wrong_timeout_named(crm_env) -> None:
    for name in VARIABLES:
        crm_env.delenv(name, raising=False)
    s = load_crm_settings()
    assert (str(s.url), s.api_token.get_secret_value(), s.timeout) == ("http://127.0.0.1:8701/", "", 30)
    crm_env.setenv("CRM_TIMEOUT", "soon")
    with pytest.raises(SettingsError) as err:
        load_crm_settings()
    assert str(err.value).splitlines()[1].startswith("  CRM_TIMEOUT: ")


def test_plain_http_is_refused_in_production_in_one_line(crm_env) -> None:
    crm_env.setenv("CRM_URL", "http://crm:crm-hunter2@crm.example/")
    with pytest.raises(SettingsError) as err:
        load_service_settings(CrmSettings, environment="production")
    assert str(err.value).splitlines() == [
        "Invalid configuration (environment variables):",
        "  CRM_URL: must be an https:// URL in production (CRM_API_TOKEN would travel in clear)",
    ]
    assert load_service_settings(CrmSettings, environment="staging").url.scheme == "http"
    crm_env.setenv("CRM_URL", "https://crm.example")
    assert load_service_settings(CrmSettings, environment="production").url.scheme == "https"


def test_repr_shows_neither_the_token_nor_a_url_password(crm_env) -> None:
    crm_env.setenv("CRM_URL", "https://crm:crm-hunter2@crm.example/")
    crm_env.setenv("CRM_API_TOKEN", "tok-hunter2")
    s = load_crm_settings()
    assert "hunter2" not in repr(s) + str(s)
    assert "url='https://crm:***@crm.example/'" in repr(s)

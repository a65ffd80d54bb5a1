"""The release string each process reports (Sentry, `inspect stats`) comes from one setting."""

import pytest

from common.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBS_RELEASE", raising=False)
    monkeypatch.delenv("RELEASE", raising=False)


def test_jobs_release_wins_then_release_then_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().release_for("reports") == "reports@dev"
    monkeypatch.setenv("RELEASE", "9.9.9")
    assert load_settings().release_for("reports") == "reports@9.9.9"
    monkeypatch.setenv("JOBS_RELEASE", "reports@1.0.1")  # frozen into the pex by ./scripts/release
    assert load_settings().release_for("reports") == "reports@1.0.1"


def test_a_malformed_jobs_release_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBS_RELEASE", "1.0.1")
    with pytest.raises(SettingsError, match="JOBS_RELEASE"):
        load_settings()

"""The release a worker runs, as operators see it: `celery inspect stats` on real workers.

JOBS_RELEASE is what ./scripts/release freezes into each pex; without it a worker says
`<service>@dev`. The same string is Sentry's `release` (common.settings.release_for).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.celery_app import current_app
from devtools.testing.workers import Workers


@pytest.fixture(scope="module")
def workers(data_dir: Path, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Workers]:
    w = Workers(data_dir)
    try:
        w.start(["reports", "sync"], env={"reports": {"JOBS_RELEASE": "reports@4.5.6"}})
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """No JOBS_RELEASE/RELEASE inherited from the shell: the sync worker must fall back."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("JOBS_RELEASE", raising=False)
        mp.delenv("RELEASE", raising=False)
        yield mp


def test_inspect_stats_reports_each_workers_release(workers: Workers) -> None:
    stats: Any = current_app().control.inspect(timeout=10).stats()
    assert stats[workers.names["reports"]]["release"] == "reports@4.5.6"
    assert stats[workers.names["sync"]]["release"] == "sync@dev"

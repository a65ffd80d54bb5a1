"""Reading a real /metrics endpoint in tests, by metric name and labels."""

from __future__ import annotations

import base64
import time
import urllib.request
from collections.abc import Callable

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, auth: tuple[str, str] | None = None) -> Samples:
    """Every sample `url` serves (a port alone means the local worker's endpoint)."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def worker_metrics(port: int) -> Samples:
    return scrape(f"http://127.0.0.1:{port}/metrics")


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and want <= got)


def scrape_until(read: Callable[[], Samples], ok: Callable[[Samples], bool], timeout: float = 20) -> Samples:
    """Scrape until `ok` (a task's counters are updated just after its result is stored)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = read()
        if ok(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)

"""Polling for effects that other processes produce (workers, beat, peers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence


def wait_until(check: Callable[[], object], timeout: float = 30, interval: float = 0.1) -> None:
    """Return once `check()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        time.sleep(interval)


def max_in_any_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most of `times` inside any half-open window [t, t + window): what a rate limit bounds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best

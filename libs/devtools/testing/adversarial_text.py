"""Text that makes a backtracking pattern quadratic, or hits a pattern's first character at
every position: for tests that masking stays linear (common.masking)."""

from __future__ import annotations

MiB = 1 << 20
ADVERSARIAL: dict[str, str] = {
    "letters": "a" * MiB,
    "dots": "." * MiB,
    "a.": "a." * (MiB // 2),
    "at signs": "@" * MiB,
    "a@": "a@" * (MiB // 2),
    "@a.": "@" + "a." * (MiB // 2),
    "a@a.": "a@a." * (MiB // 4),
    "digits": "1" * MiB,
    "1-": "1-" * (MiB // 2),
    "1 ": "1 " * (MiB // 2),
    "+1": "+1" * (MiB // 2),
    "x://": "x://" * (MiB // 4),
    "redis://a": "redis://" + "a" * MiB,
    "password=": "password=" * (MiB // 9),
    "quotes": "'" * MiB,
    "'password'": "'password'" * (MiB // 10),
    "a_": "a_" * (MiB // 2),
}

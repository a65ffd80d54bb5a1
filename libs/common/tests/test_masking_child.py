"""Masking a megabyte of adversarial text is bounded, in a child process (platform tier).

Split from fast/test_masking.py (the fast tier starts no process): a pattern running in C may
not be interruptible by a signal, so a regression would hang an in-process test; here the
child is killed by its timeout instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common.masking import TEXT_CHARS

LIBS = str(Path(__file__).resolve().parents[2])
# The same shapes as fast/test_masking.py's.
SHAPES = """
MiB = 1 << 20
ADVERSARIAL = {
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
"""
ADVERSARIAL: dict[str, str] = {}
exec(SHAPES, {}, namespace := {})  # noqa: S102 - the same shapes here and in the child
ADVERSARIAL.update(namespace["ADVERSARIAL"])
# Run in a child process: a pattern running in C may not be interruptible by a signal, so a
# regression would hang an in-process test instead of failing it. The child masks every shape
# capped (as every caller does) and, for linearity of the patterns themselves, the whole
# megabyte uncapped too; today's code passes in about a second on a loaded machine, the old
# pattern needs minutes per shape.
CHILD = (
    SHAPES
    + """
import json
from common.masking import mask_text
out = {}
for name, text in ADVERSARIAL.items():
    capped = mask_text(text)
    mask_text(text, len(text))
    out[name] = [len(capped), capped[-40:]]
print(json.dumps(out))
"""
)


def test_a_megabyte_of_adversarial_text_masks_in_bounded_time_and_is_capped() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([LIBS, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    shown = json.loads(done.stdout)
    assert set(shown) == set(ADVERSARIAL)
    for name, (length, tail) in shown.items():
        assert length <= TEXT_CHARS + 40, name
        assert tail.endswith("more chars cut]"), (name, tail)

"""A producer process of one side: sends the tasks it is given by name with that side's code.

Run by test_mixed_versions.py as `python -P producer.py` with only one side's `libs` and
`services` on PYTHONPATH, so what it imports is that side's `common` (either layout: the
per-service `contracts` or the older `common.catalogue`). It reads a JSON list of
`{"task": name, "args": [...]}` on stdin and prints one line per task:
`MIXED {"task": ..., "id": ..., "sent_at": ...}`, or `{"task": ..., "error": ...}` when this
side's producer refused the call (unknown task, arguments that do not fit its contract).
Its first line lists the files of the `common` and `contracts` modules it loaded.

It uses only what every release has had: `common.celery_app.create_app(service)` and
`common.calls.apply_async(name, args, kwargs, outbox=False)` (published at once, not kept in
the outbox table, whose schema is the other side's business).
"""

from __future__ import annotations

import json
import sys
import time

MARK = "MIXED "


def main() -> int:
    from common import calls
    from common.celery_app import create_app

    app = create_app("producer")
    # Where this side's code came from, for the test to check nothing of the other side leaked in.
    ours = [m for name, m in sys.modules.items() if name.split(".")[0] in ("common", "contracts")]
    print(MARK + json.dumps({"modules": sorted({m.__file__ for m in ours if getattr(m, "__file__", None)})}))
    for item in json.load(sys.stdin):
        sent_at = time.time()
        try:
            result = calls.apply_async(item["task"], item["args"], {}, app=app, outbox=False)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            line = {"task": item["task"], "error": f"{type(exc).__name__}: {exc}"}
        else:
            line = {"task": item["task"], "id": result.id, "sent_at": sent_at}
        print(MARK + json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

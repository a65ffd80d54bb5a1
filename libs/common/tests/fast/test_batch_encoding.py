"""Batch encoding, in-process: untrusted headers, and callbacks that decode as Celery's.

The counting itself is Lua in Redis (`common.transport.batches`), tested against a real
Redis in `libs/common/tests/test_batches.py` (with the members' message sizes): the fast
tier's stub broker does not run it.
"""

from __future__ import annotations

import json

from common.transport import batches, protocol


def test_untrusted_headers_name_no_batch() -> None:
    for value in (None, 1, "x" * 32, "../jobs.owners", ["a"], "A" * 32):
        assert batches.valid_id(value) is None
    for raw in (b"\xff", b"[]", b'{"headers": 3}', b"{" * 10_000):
        assert batches.batch_of_raw(raw) is None


def test_a_callback_message_with_its_status_spliced_in_is_a_valid_protocol_2_call() -> None:
    status = {"batch_id": "a" * 32, "total": 2, "succeeded": 1, "failed": 1, "failed_ids": ['"quoted"\\id']}
    head, tail = batches.callback_message("sync.echo", "sync", [7], {"k": "v"}, "cb-id")
    # What the Lua step does: the status JSON, escaped as a JSON string's contents.
    message = head + json.dumps(json.dumps(status))[1:-1] + tail
    envelope = json.loads(message)
    args, kwargs, _ = protocol.task_call(envelope)
    assert args == [status, 7] and kwargs == {"k": "v"}
    assert envelope["headers"]["id"] == "cb-id"
    assert envelope["properties"]["delivery_info"]["routing_key"] == "sync"

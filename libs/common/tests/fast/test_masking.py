"""Masking is bounded and linear, hides secrets in every form and personal data by pattern.

The megabyte-in-a-child-process check is ../test_masking_child.py (the fast tier starts no
process). Issue 21: the e-mail pattern backtracked quadratically (1 MiB of letters without an `@` took
about 15 minutes, holding the GIL), the broker password showed in its `?password=` form, and
failure logs masked arguments by key name only (an `ssn` key and free text came through).
"""

from __future__ import annotations

import json
import logging

import pytest

from common.masking import (
    ITEMS,
    LINE_CHARS,
    MASK,
    TEXT_CHARS,
    URL_CHARS,
    MaskingFormatter,
    MaskPIIFilter,
    mask,
    mask_text,
    redact_secrets,
    redact_url,
)
from common.observability.reporting import handle_task_failure
from devtools.testing.adversarial_text import ADVERSARIAL, MiB


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_each_shape_is_cut_and_says_how_much(name: str) -> None:
    text = ADVERSARIAL[name]
    out = mask_text(text)
    assert len(out) <= TEXT_CHARS + 40
    assert out.endswith(" more chars cut]")
    assert int(out.rsplit("[... ", 1)[1].split()[0]) >= len(text) - TEXT_CHARS - URL_CHARS - 64


def test_a_match_over_the_cut_is_masked_whole_never_half_shown() -> None:
    for secret in ("ann.marie.smith@example.com", "redis://:s3cret-pw@redis.internal:6379/0"):
        for shift in range(0, len(secret) + 1, 3):
            text = "x " * ((TEXT_CHARS - shift) // 2) + secret + " tail" * 2000
            out = mask_text(text)
            assert "ann.marie" not in out and "s3cret" not in out, shift


def test_text_cut_once_is_not_cut_again() -> None:
    once = mask_text("word " * 40_000)
    assert mask_text(once) == once
    assert mask(mask(["word " * 40_000])) == mask(["word " * 40_000])


def test_short_text_is_unchanged_but_for_masks() -> None:
    text = "Task sync.echo[5f2b1c3e-1234-4567-8901-234567890123] failed at 2024-05-01 12:00:00"
    assert mask_text(text) == text


# --- credentials in every form ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=***"),
        (
            "redis://h:6379/0?db=1&password=s3cret&ssl_cert_reqs=none",
            "redis://h:6379/0?db=1&password=***&ssl_cert_reqs=none",
        ),
        ("redis://:pw@h:6379/0?password=s3cret", "redis://:***@h:6379/0?password=***"),
        ("rediss://h:6380/0?PASSWORD=s3cret", "rediss://h:6380/0?PASSWORD=***"),
        ("https://crm.example/api?token=t0k&x=1", "https://crm.example/api?token=***&x=1"),
        ("https://crm.example/api?api_key=k3y", "https://crm.example/api?api_key=***"),
        ("https://h/?key=k3y&pass=p&passwd=q&secret=s", "https://h/?key=***&pass=***&passwd=***&secret=***"),
        ("postgres://u:dbpw@db/jobs?sslpassword=x", "postgres://u:***@db/jobs?sslpassword=***"),
        ("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379/0", "sentinel://:***@s2:26379/0"),
        (
            "sentinel://s1:26379;sentinel://s2:26379/0?sentinel_password=spw",
            "sentinel://s1:26379;sentinel://s2:26379/0?sentinel_password=***",
        ),
    ],
)
def test_a_url_hides_its_password_in_every_form(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert mask_text(f"Error connecting to {url} (refused)") == f"Error connecting to {shown} (refused)"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:6379/0?db=1&ssl_keyfile=/etc/k.pem&ssl_cert_reqs=required",
        "amqp://h//?routing_key=sync",
        "redis://jobs@h:6379/0",
    ],
)
def test_parameters_that_hold_no_secret_are_kept(url: str) -> None:
    assert redact_url(url) == url


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Error 111 connecting to redis://:s3cret@10.0.0.5:6379. Connection refused.", "s3cret"),
        ("ConnectionError('redis://default:s3cret@redis:6379/0')", "s3cret"),
        ("broker at redis://redis:6379/0?password=s3cret is unreachable", "s3cret"),
        ("Sentinel sentinel://:s3cret@a:26379;sentinel://:s3cret@b:26379 failed", "s3cret"),
        ("kwargs={'password': 's3cret', 'db': 0}", "s3cret"),
        ('{"sentinel_password": "s3cret"}', "s3cret"),
        ("REDIS_PASSWORD=s3cret ./run", "s3cret"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.s3cret", "s3cret"),
    ],
)
def test_secrets_in_free_text_are_hidden(text: str, secret: str) -> None:
    assert secret not in mask_text(text)
    assert secret not in redact_secrets(text)


def test_settings_repr_hides_every_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import load_settings

    s = load_settings(
        redis_url="redis://redis.internal:6379/0?password=broker-pw",
        result_backend_url="sentinel://:data-pw@a:26379;sentinel://:data-pw@b:26379/0",
        redis_sentinel_master="jobs",
        redis_sentinel_password="sentinel-pw",
        database_url="postgres://jobs:db-pw@db/jobs?sslpassword=ssl-pw",
    )
    for shown in (repr(s), str(s)):
        for secret in ("broker-pw", "data-pw", "sentinel-pw", "db-pw", "ssl-pw"):
            assert secret not in shown
        assert "redis.internal:6379/0?password=***" in shown


# --- personal data by pattern and by key --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("ssn 123-45-6789 on file", "ssn [id] on file"),
        ("card 4111 1111 1111 1111 declined", "card [card] declined"),
        ("card 4111111111111111 declined", "card [card] declined"),
        ("call 555-123-4567 or (555) 123-4567", "call [phone] or [phone]"),
        ("call +44 20 7946 0958 or +15551234567", "call [phone] or [phone]"),
        ("write to ann.smith@example.co.uk", "write to [email]"),
        ("x" * 200 + "@example.com", "[email]"),
    ],
)
def test_personal_data_is_masked_by_pattern(text: str, shown: str) -> None:
    assert mask_text(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01 12:00:00.123+00:00",
        "5f2b1c3e-1234-4567-8901-234567890123",
        "12345678-1234-5678-1234-567812345678",
        "Error 111 connecting to 192.168.100.200:6379.",
        "message of 104857600 bytes over 1048576",
        "doctor 987654 at 1733600000.25",
        "succeeded in 0.123456789012345s",
    ],
)
def test_ids_times_addresses_and_counts_are_kept(text: str) -> None:
    assert mask_text(text) == text


def test_structures_are_masked_by_key_and_pattern_and_bounded() -> None:
    data = {
        "ssn": "123-45-6789",
        "SSN": 123456789,
        "date_of_birth": "1980-01-01",
        "crm_api_token": "t",
        "note": "call 555-123-4567 re ssn 123-45-6789, ann@example.com",
        "doctor_id": 7,
        "many": list(range(ITEMS + 50)),
        "huge": ["word " * 100_000] * 50,
    }
    out = mask(data)
    assert out["ssn"] == out["SSN"] == out["date_of_birth"] == out["crm_api_token"] == MASK
    assert out["note"] == "call [phone] re ssn [id], [email]"
    assert out["doctor_id"] == 7
    assert out["many"][:ITEMS] == list(range(ITEMS)) and out["many"][-1] == "[... 50 more items cut]"
    assert len(json.dumps(out)) < 100_000  # 25 MB of strings in, a bounded structure out


def reported(caplog: pytest.LogCaptureFixture, task_id: str) -> logging.LogRecord:
    return next(r for r in caplog.records if r.name == "common.task_failure" and r.task_id == task_id)


def test_failure_logs_mask_argument_values_by_pattern_not_only_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    said = "ann@example.com said 123-45-6789 / 555-123-4567"
    args = [{"ssn": "123-45-6789", "dob": "1980-01-01"}, said]
    kwargs = {
        "note": "card 4111 1111 1111 1111",
        "patient_ssn": "987-65-4321",
        "iban": "DE89370400440532013000",
    }
    handle_task_failure(
        sender=None, task_id="t-ssn", exception=RuntimeError("for 123-45-6789"), args=args, kwargs=kwargs
    )
    record = reported(caplog, "t-ssn")
    shown = f"{record.getMessage()} {record.task_args} {record.task_kwargs} {record.exception}"
    for secret in (
        "123-45-6789",
        "1980-01-01",
        "ann@example.com",
        "555-123-4567",
        "4111",
        "987-65-4321",
        "DE89",
    ):
        assert secret not in shown, secret
    assert record.task_args[0] == {"ssn": MASK, "dob": MASK}


def test_a_huge_argument_is_reported_capped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    problems = ["a" * 160_000]  # issue 21: contract-valid, and quadratic to mask before
    handle_task_failure(
        sender=None, task_id="t-huge", exception=ValueError("bad " + problems[0]), args=[problems], kwargs={}
    )
    record = reported(caplog, "t-huge")
    assert len(record.getMessage()) < 2 * TEXT_CHARS and "more chars cut]" in record.getMessage()
    assert len(record.exception) < 2 * TEXT_CHARS


def test_log_filter_and_formatter_are_bounded() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "got %s", ("a@" * MiB,), None)
    MaskPIIFilter().filter(record)
    assert len(record.msg) <= TEXT_CHARS + 40
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "b" * MiB + " ann@example.com", None, None)
    line = MaskingFormatter().format(record)
    assert len(line) <= LINE_CHARS + 40 and line.endswith("more chars cut]")

"""Masking: what a log line, an error event, an admin page or a CLI error may show.

One module for both kinds of hiding, so every place that shows text calls the same thing:

- **credentials** (`redact_url`, `redact_secrets`): a URL's password in its userinfo form
  (`redis://user:pw@host`) and in its query form (`?password=pw`, `&token=...`), Sentinel URLs
  (`sentinel://:pw@s1;sentinel://:pw@s2`) included, whether the URL stands alone or sits in free
  text (`Error 111 connecting to redis://:pw@host`); `password=...` / `"token": "..."` pairs;
- **personal data** (`mask_text`, `mask`): e-mail addresses, phone numbers, national-id-like
  numbers (SSN `123-45-6789`) and card-like digit runs (13-19 digits) by pattern in any text;
  the values of personal or secret keys (`PII_KEYS`) in structured data, whatever they hold.

Bounded and linear. Text is cut to a prefix first (`TEXT_CHARS`, `LINE_CHARS` for a whole log
line with its traceback) and the cut is said (`[... N more chars cut]`); a container shows at
most `ITEMS` items. Every pattern has bounded repetitions and starts only where its first
character can start (a look-behind), so it costs a bounded number of steps per character: a
megabyte of letters without an `@`, of `a.`, of dots or of `@`s masks in milliseconds. The
old e-mail pattern (`[...]+@[...]+\\.[A-Za-z]{2,}`) backtracked quadratically: 1 MiB took about
15 minutes, held the GIL, and stopped a worker's heartbeat (issue 21).

Masking happens before the cut is made (on a prefix a little longer than the cut), so the cut
can never fall inside a URL or an address and show half of it.

Not `urllib.parse.urlsplit` for credentials: it ends the authority at the first `/`, `?` or
`#`, so a password typed with one of those unencoded (`redis://:p#ss@host`) would be cut in two
and its tail shown as the path or fragment. Here the credentials run to the *last* `@` of the
URL: a password is always hidden whole (an `@` later in the URL, which no broker or database
URL has, costs at most some over-redaction, never a leak), and the host is kept as written,
IPv6 brackets included.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

# --- limits -------------------------------------------------------------------------------

TEXT_CHARS = 8192  # what is kept of one string (an argument, a message, an exception's text)
LINE_CHARS = 32768  # what is kept of one finished log line (message + traceback)
TOTAL_CHARS = 65536  # what is kept of all the strings of one structure (`mask`) together
KEY_CHARS = 256  # what is kept of one dict key
ITEMS = 100  # items shown of one list or dict; the rest are counted
DEPTH = 8  # nesting shown; deeper values are replaced
# Masking runs on this much more than is kept: longer than any one match (a URL token is at
# most URL_CHARS), so no match is cut in two by the cut.
_MARGIN = 4096
URL_CHARS = 2048

MASK = "[redacted]"
SECRET = "***"

# --- credentials ----------------------------------------------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)
# Names whose value is a secret, in a query (`?password=`, `&token=`), a `name=value` pair or a
# JSON/dict key: these alone, or the first six with a prefix (`sentinel_password`,
# `sslpassword`, `client_secret`, `access_token`), or a key of a kind (`api_key`, `secret_key`).
# Not `routing_key`, `ssl_keyfile` or `passport`: the name must end where the list says.
_SECRET_NAME = (
    r"(?:[A-Za-z0-9_-]{0,40}?(?:password|passwd|pwd|secret|token|credentials?)"
    r"|pass|auth|key|sig|signature|(?:api|access|secret|private|signing|client)[_-]?key)"
)
# A value: quoted (to its closing quote, or 512 characters) or bare (to a separator).
_VALUE = r"""(?:"[^"\n]{0,512}"?|'[^'\n]{0,512}'?|[^\s&;,'"}\])]{1,512})"""

# --- personal data ----------------------------------------------------------------------------

# The local part starts where a run of its characters starts (the look-behind) and is taken
# whole, never given back (possessive): one scan per run, however long; at most 8 labels of at
# most 63 characters, none holding a dot, so a domain splits one way only.
EMAIL = (
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++" r"@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
# An SSN-like national id (123-45-6789, 123 45 6789).
NATIONAL_ID = r"(?<![\w.+-])\d{3}(?P<idsep>[ -])\d{2}(?P=idsep)\d{4}(?![\w-])"
# A card-like number: a run of 13-19 digits, or the groups cards are printed in (4-4-4-1..7,
# 4-6-4..5) split by one space or dash.
CARD = (
    r"(?<![\w.+-])(?:\d{13,19}|\d{4}(?P<cardsep>[ -])"
    r"(?:\d{4}(?P=cardsep)\d{4}(?P=cardsep)\d{1,7}|\d{6}(?P=cardsep)\d{4,5}))(?![\w-])"
)
# A phone number: `+` and 8-15 digits (optionally grouped), or 2-5 digits (in brackets or not)
# and two groups of 3-4 split by a space or dash (555-123-4567, (555) 123-4567, 020 7946 0958).
# Not a bare run of 9-12 digits (a count, a size, a timestamp) nor a date (2024-05-01 12:00).
PHONE = (
    r"(?<![\w.+-])(?:\+\d(?:[ -]?\(?\d\)?){7,14}"
    r"|(?:\+\d{1,3}[ -])?(?:\(\d{2,5}\) ?|\d{2,5}[ -])\d{3,4}[ -]\d{3,4})(?![\w-])"
)

# One pass over the text: every kind is an alternative, so matches never overlap and each is
# replaced whole (`mask_text` keeps a match that runs over the cut whole, masked). Each kind
# is searched for only when the text holds the characters it needs (`_needed`).
_KINDS = {
    # A URL: its scheme from where the run of scheme characters starts (taken whole), `://`,
    # and everything up to the next whitespace (a password may hold `#`, `/`, `?`, `@`, quotes;
    # what trails the host is kept as written).
    "url": rf"(?<![A-Za-z0-9+.-])(?P<url>[A-Za-z][A-Za-z0-9+.-]*+://\S{{0,{URL_CHARS}}})",
    # name=value (query strings, env dumps, kwargs reprs) and "name": value (JSON, dict reprs).
    "name": rf"(?<![A-Za-z0-9_-])(?P<name>{_SECRET_NAME})(?P<sep>\s{{0,3}}=\s{{0,3}})(?P<value>{_VALUE})",
    "qname": rf"(?P<q>[\"'])(?P<qname>{_SECRET_NAME})(?P=q)(?P<qsep>\s{{0,3}}:\s{{0,3}})(?P<qvalue>{_VALUE})",
    "bearer": r"(?<![A-Za-z0-9_])(?P<bearer>Bearer\s{1,3})[A-Za-z0-9._~+/=-]{8,2048}",
    "email": rf"(?P<email>{EMAIL})",
    "id": rf"(?P<id>{NATIONAL_ID})",
    "card": rf"(?P<card>{CARD})",
    "phone": rf"(?P<phone>{PHONE})",
}
_DIGIT = re.compile(r"\d")


@functools.cache
def _pattern(kinds: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(_KINDS[k] for k in kinds), re.IGNORECASE) if kinds else None


def _needed(text: str, url: bool = True) -> re.Pattern[str] | None:
    """The alternatives `text` can hold at all: a text without `@` is never searched for
    addresses, one without digits never for numbers (most text skips most kinds)."""
    digits = _DIGIT.search(text) is not None
    quoted = ":" in text and ("'" in text or '"' in text)
    present = {
        "url": url and "://" in text,
        "name": "=" in text,
        "qname": quoted,
        "bearer": "earer" in text or "EARER" in text,
        "email": "@" in text,
        "id": digits,
        "card": digits,
        "phone": digits,
    }
    return _pattern(tuple(k for k in _KINDS if present[k]))


def split_credentials(url: str) -> tuple[str, str | None, str]:
    """`url` as (`scheme://`, userinfo or None, the rest: host, port, path, query as written).

    No scheme (not a URL with an authority): `("", None, url)`.
    """
    match = _SCHEME.match(url)
    if match is None:
        return "", None, url
    prefix, rest = match.groups()
    userinfo, at, after = rest.rpartition("@")
    if not at:
        return prefix, None, rest
    return prefix, userinfo, after


def _quoted(value: str) -> str:
    return f"{value[0]}{SECRET}{value[0]}" if value[:1] in ("'", '"') else SECRET


def _replacement(m: re.Match[str], personal: bool) -> str:
    g = m.groupdict()
    if g.get("url") is not None:
        url = _redact_userinfo(g["url"])
        inside = _needed(url, url=False)
        return url if inside is None else inside.sub(lambda inner: _replacement(inner, personal), url)
    if g.get("name") is not None:
        return f"{g['name']}{g['sep']}{SECRET}"
    if g.get("qname") is not None:
        q = g["q"]
        return f"{q}{g['qname']}{q}{g['qsep']}{_quoted(g['qvalue'])}"
    if g.get("bearer") is not None:
        return f"{g['bearer']}{SECRET}"
    if personal:
        for kind in ("email", "id", "card", "phone"):
            if g.get(kind) is not None:
                return f"[{kind}]"
    return m.group(0)


def _redact_userinfo(url: str) -> str:
    prefix, userinfo, rest = split_credentials(url)
    if userinfo is not None:
        user, colon, _password = userinfo.partition(":")
        if colon:  # a user name alone (redis://user@host) has nothing secret to hide
            url = f"{prefix}{user}:{SECRET}@{rest}"
    return url


def redact_url(url: str) -> str:
    """`url` with every password replaced by `***`: its userinfo's (`user:pw@`) and its query's
    (`?password=`, `&token=`, ...); the user name, host, port, path and other parameters kept.

    A Sentinel URL (`sentinel://:pw@s1:26379;sentinel://:pw@s2:26379/0`) is hidden up to its
    last `@`, every sentinel's password with it.
    """
    return redact_secrets(url, limit=max(TEXT_CHARS, len(url)))


def redact_secrets(text: str, limit: int = TEXT_CHARS) -> str:
    """`text` (capped to `limit`) with every credential hidden, personal data left: URLs in it
    (userinfo and query passwords), `password=...` and `"token": "..."` pairs, `Bearer ...`."""
    return _mask(text, limit, personal=False)


# Keys whose values identify a person or are secrets; masked wherever they appear in
# structured data (compared lower-cased, `-` as `_`).
PII_KEYS = frozenset(
    {
        "email",
        "recipient",
        "recipients",
        "to",
        "name",
        "first_name",
        "last_name",
        "full_name",
        "patient_name",
        "doctor_name",
        "phone",
        "phone_number",
        "mobile",
        "address",
        "street",
        "postcode",
        "zip",
        "ssn",
        "social_security_number",
        "national_id",
        "tax_id",
        "passport",
        "dob",
        "date_of_birth",
        "birth_date",
        "birthdate",
        "card",
        "card_number",
        "pan",
        "cvv",
        "cvc",
        "iban",
        "account_number",
        "password",
        "passwd",
        "token",
        "secret",
        "api_key",
        "authorization",
    }
)
# A key holding one of these (`crm_api_token`, `sentinel_password`, `client_secret`) is masked too.
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "api_key", "apikey")


def cap(text: str, limit: int = TEXT_CHARS) -> str:
    """`text` cut to `limit` characters, the cut said: `[... N more chars cut]`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}{_cut(len(text) - limit)}"


def _cut(n: int) -> str:
    return f"[... {n} more chars cut]"


_SAID_CUT = re.compile(r"\[\.\.\. \d{1,20} more chars cut\]\Z")


def _mask(text: str, limit: int, personal: bool) -> str:
    # Searched: the kept prefix and a margin longer than any one match, so a match running over
    # the cut is found whole and kept whole, masked; nothing of the original past it is shown.
    if len(text) > limit:
        said = _SAID_CUT.search(text, max(0, len(text) - 48))
        if said is not None and said.start() <= limit:
            limit = len(text)  # cut before (masked twice: a filter after the reporter): kept as cut
    if limit <= 0:
        return _cut(len(text)) if text else text
    head = text[: limit + _MARGIN]
    cut = min(len(text), limit)
    out: list[str] = []
    pos = 0
    pattern = _needed(head)
    for m in pattern.finditer(head) if pattern is not None else ():
        if m.start() >= cut:
            break
        out.append(head[pos : m.start()])
        out.append(_replacement(m, personal))
        pos = m.end()
        cut = max(cut, pos)
    if pos < cut:
        out.append(head[pos:cut])
    if len(text) <= cut:
        return "".join(out)
    # A match over the cut was masked whole; what it became is cut like the rest (safe now).
    return f"{''.join(out)[:limit]}{_cut(len(text) - cut)}"


def mask_text(text: str, limit: int = TEXT_CHARS) -> str:
    """`text` capped to `limit` characters (`[... N more chars cut]`), its credentials and
    personal data masked: the one function for any text shown to a person or written to a log.

    Bounded and linear: at most `limit` plus a small margin is ever searched, whatever the
    length of `text`, and each pattern costs a bounded number of steps per character.
    """
    return _mask(text, limit, personal=True)


def _is_personal_key(key: Any) -> bool:
    k = str(key).lower().replace("-", "_")
    return k in PII_KEYS or any(part in k for part in SECRET_KEY_PARTS)


def mask(value: Any, limit: int = TEXT_CHARS, total: int = TOTAL_CHARS) -> Any:
    """Mask personal data and secrets in JSON-like data: a personal key's value whatever it is,
    every string (keys too) by pattern, each capped to `limit` and all of them together to
    `total` characters; at most `ITEMS` items per container and `DEPTH` levels."""
    return _mask_value(value, 0, limit, [total])


def _mask_value(value: Any, depth: int, limit: int, budget: list[int]) -> Any:
    if depth > DEPTH:
        return MASK
    if isinstance(value, str):
        return _mask_string(value, limit, budget)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i == ITEMS:
                out["[...]"] = f"{len(value) - ITEMS} more keys cut"
                break
            key = _mask_string(k, KEY_CHARS, budget) if isinstance(k, str) else k
            out[key] = MASK if _is_personal_key(k) else _mask_value(v, depth + 1, limit, budget)
        return out
    if isinstance(value, list | tuple):
        items = [_mask_value(v, depth + 1, limit, budget) for v in value[:ITEMS]]
        if len(value) > ITEMS:
            items.append(f"[... {len(value) - ITEMS} more items cut]")
        return items if isinstance(value, list) else tuple(items)
    return value


def _mask_string(text: str, limit: int, budget: list[int]) -> str:
    masked = mask_text(text, max(0, min(limit, budget[0])))
    budget[0] -= min(len(text), limit)
    return masked


# --- logging --------------------------------------------------------------------------------


class MaskingFormatter(logging.Formatter):
    """Masks the final text, tracebacks included, whatever formatter it wraps (capped: `LINE_CHARS`)."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(self.inner.format(record), LINE_CHARS)


def mask_handlers(logger: logging.Logger) -> None:
    """Make every handler of `logger` mask PII (Celery installs its own in workers)."""
    for handler in logger.handlers:
        if not isinstance(handler.formatter, MaskingFormatter):
            handler.setFormatter(MaskingFormatter(handler.formatter))


class MaskPIIFilter(logging.Filter):
    """Masks every log record's message and structured extras (capped, by pattern and key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
                record.args = None
            except Exception:  # noqa: BLE001 - a broken format must not drop the record
                pass
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        for key in ("args_", "task_args", "task_kwargs", "exception"):
            if hasattr(record, key):
                setattr(record, key, mask(getattr(record, key)))
        return True


# Celery's "Task <name>[<id>] succeeded in <t>s: <return value>" (celery.app.trace.LOG_SUCCESS)
# prints what a task returned, which may be a patient's name no pattern can find. The value
# is replaced before any handler or formatter sees it, in the text and in the record's
# `data` extra (what a JSON handler would print).
RESULT_HIDDEN = "[result hidden]"
TRACE_LOGGER = "celery.app.trace"


class HideTaskResultsFilter(logging.Filter):
    """On Celery's trace logger: a task's return value never reaches a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and "return_value" in args:
            hidden = {**args, "return_value": _hidden(args["return_value"])}
            record.args = hidden
            if isinstance(getattr(record, "data", None), dict):
                record.data = hidden
        return True


def _hidden(value: Any) -> str:
    return "None" if value in (None, "None") else RESULT_HIDDEN


def hide_task_results() -> None:
    """Install `HideTaskResultsFilter` on Celery's trace logger (once; logging_dict does it too)."""
    trace_logger = logging.getLogger(TRACE_LOGGER)
    if not any(isinstance(f, HideTaskResultsFilter) for f in trace_logger.filters):
        trace_logger.addFilter(HideTaskResultsFilter())

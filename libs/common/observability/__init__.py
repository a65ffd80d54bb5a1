"""Seeing the platform run without seeing personal data: Sentry, error reporting, logging, and
the masking (`pii`, `redaction`) every log line and error event passes through."""

"""Seeing the platform run without seeing personal data: Sentry, error reporting, logging, and
the masking (`masking`: personal data and credentials, bounded) every log line and error event
passes through."""

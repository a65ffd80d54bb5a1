"""Seeing the platform run without seeing personal data: Sentry, error reporting, logging and
metrics, each passing what it shows through `common.masking` (personal data and credentials,
bounded) first."""

"""The CRM sync worker service: consumes the `sync` queue."""

"""The web side: Django admin over the platform's data and schedules (pex `web`)."""

"""Shared library of every service: settings, Celery app factory, sending, transport, models."""

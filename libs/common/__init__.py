"""Shared library of every service: settings, Celery app factory, task catalogue, models."""

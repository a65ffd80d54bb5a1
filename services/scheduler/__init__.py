"""Celery beat with the database scheduler (pex `scheduler`); run exactly one."""

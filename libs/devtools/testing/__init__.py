"""Test support: a real, isolated platform per test session (Redis, database, workers)."""

"""Loaded before common's test plugin configures the session (pytest reads the conftest files
of the paths it is given first): the mixed-versions test's database is PostgreSQL.

Eight worker processes write to it at once; on SQLite a transaction that reads and then
writes (payments' claim) fails at once with "database is locked" when another process holds
the write lock, a flake that says nothing about versions. TEST_DATABASE=sqlite overrides.
"""

import os

os.environ.setdefault("TEST_DATABASE", "postgres")

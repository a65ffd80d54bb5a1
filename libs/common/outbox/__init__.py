"""The transactional outbox: tasks kept in the database until the broker has them.

`common.calls` writes a task here when it is sent inside a Django transaction (published
after the commit, never on rollback) or when the broker is unreachable; the relay
(`relay_outbox`) publishes what is left. Producers never use this package directly.
"""

"""The Redis broker: kombu's transport made reliable (`transport`), bound by URL alias.

Imports nothing itself: its modules import each other's constants (`scripts`) without
loading the whole transport, which the dead-letter store and batches sit below.
"""

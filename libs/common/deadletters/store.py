"""The dead-letter store's names, where they were first imported from.

The store lives with the transport that writes it (`common.transport.dead_letter_store`); this
module keeps the old import path working. New code imports `common.deadletters` (the public
names) or the transport's module.
"""

from common.transport.dead_letter_store import *  # noqa: F403

"""Dead letters: messages a worker could not run, kept per queue with the reason why."""

from common.transport.dead_letter_store import (
    REASONS,
    DeadLetter,
    DeadLetteredError,
    DeadLetters,
    Rejection,
)

__all__ = ["REASONS", "DeadLetter", "DeadLetteredError", "DeadLetters", "Rejection"]

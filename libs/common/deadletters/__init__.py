"""Dead letters: messages a worker could not run, kept per queue with the reason why."""

from common.deadletters.store import (
    REASONS,
    DeadLetter,
    DeadLetteredError,
    DeadLetters,
    Rejection,
)

__all__ = ["REASONS", "DeadLetter", "DeadLetteredError", "DeadLetters", "Rejection"]

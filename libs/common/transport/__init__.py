"""Moving messages and results through Redis: the reliable broker transport, what a worker
checks on receipt (intake) and how it reads a message (protocol), the result backend, locks."""

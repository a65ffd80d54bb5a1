"""The emails worker service: consumes the `emails` queue."""

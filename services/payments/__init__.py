"""The payments worker service: consumes the `payments` queue."""

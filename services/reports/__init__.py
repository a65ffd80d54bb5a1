"""The reports worker service: consumes the `reports` queue."""

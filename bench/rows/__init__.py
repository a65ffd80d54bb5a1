"""The bench's rows, one module each; every row's `run(bench, n, ...)` adds its lines to the table."""

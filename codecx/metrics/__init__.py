"""codecx.metrics."""

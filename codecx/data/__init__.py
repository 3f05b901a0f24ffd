"""codecx.data."""

"""codecx.inference."""

"""codecx.lit."""

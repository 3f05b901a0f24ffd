"""codecx.regularizers."""

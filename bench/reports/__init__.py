"""Reports over result files."""

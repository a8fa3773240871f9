"""vmaccel plugin package."""

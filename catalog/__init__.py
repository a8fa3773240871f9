"""vmaccel catalog package."""

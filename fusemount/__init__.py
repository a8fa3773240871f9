"""vmaccel fusemount package."""

"""vmaccel guestfs package."""

"""Fixtures for guest disk images and the nbdkit server (filled in by the test bed work)."""

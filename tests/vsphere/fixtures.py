"""Fixtures for the vcsim test bed (filled in by the test bed work)."""

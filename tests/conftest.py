"""Shared pytest configuration: the test bed fixtures live in their own modules."""

pytest_plugins = [
    "tests.guestimages.fixtures",
    "tests.vsphere.fixtures",
]

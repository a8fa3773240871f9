"""Tests of the REST API (vmaccel/api) over real HTTPS."""

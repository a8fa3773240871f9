"""Fixtures of the fault matrix, shared with tests/plugin: the in-process CLI (`cli`), fresh
repositories (`new_repo`) and a config directory of each test's own (`config_dir`, autouse)."""

from tests.plugin.conftest import cli, config_dir, new_repo

__all__ = ["cli", "config_dir", "new_repo"]

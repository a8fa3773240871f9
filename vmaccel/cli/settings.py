"""Settings: built once from the environment and the command line, then passed down.

Nothing below the CLI reads ``os.environ`` or sees typer objects; it gets a :class:`Settings`.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vmaccel.vocabulary.errors import PassphraseError, UsageError

ENV_REPO = "VMACCEL_REPO"
ENV_PASSPHRASE = "VMACCEL_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
ENV_CONFIG_DIR = "VMACCEL_CONFIG_DIR"


@dataclass(frozen=True)
class Settings:
    """What every command may need. ``passphrase`` is a callable so it is asked only when an
    encrypted repository is opened."""

    repo: Path | None
    lock_wait: float = 0.0
    debug: bool = False
    passphrase: Callable[[], str] = field(default=lambda: "", repr=False)
    config_dir: Path = Path("~/.config/vmaccel")
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def require_repo(self) -> Path:
        if self.repo is None:
            raise UsageError(f"no repository given: pass --repo PATH or set {ENV_REPO}")
        return self.repo


def passphrase_source(env: Mapping[str, str], confirm: bool = False) -> Callable[[], str]:
    """The passphrase from ``VMACCEL_PASSPHRASE``, else a prompt on a terminal (asked once)."""
    cache: list[str] = []

    def get() -> str:
        if cache:
            return cache[0]
        value = env.get(ENV_PASSPHRASE)
        if value is None:
            if not sys.stdin.isatty():
                raise PassphraseError(
                    f"the repository is encrypted: set {ENV_PASSPHRASE} (no terminal to ask on)"
                )
            value = getpass.getpass("Repository passphrase: ")
            if confirm and getpass.getpass("Repeat passphrase: ") != value:
                raise PassphraseError("the passphrases do not match")
        cache.append(value)
        return value

    return get


def build_settings(
    repo: Path | None,
    lock_wait: float = 0.0,
    debug: bool = False,
    env: Mapping[str, str] | None = None,
    confirm_passphrase: bool = False,
) -> Settings:
    env = os.environ if env is None else env
    if repo is None and env.get(ENV_REPO):
        repo = Path(env[ENV_REPO])
    config_dir = Path(env.get(ENV_CONFIG_DIR) or Path.home() / ".config" / "vmaccel")
    return Settings(
        repo=repo.absolute() if repo else None,
        lock_wait=lock_wait,
        debug=debug,
        passphrase=passphrase_source(env, confirm_passphrase),
        config_dir=config_dir,
        env=dict(env),
    )

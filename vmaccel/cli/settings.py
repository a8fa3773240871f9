"""The application's side of a :class:`~vmaccel.service.context.Context`: the process
environment, and a passphrase asked on the terminal when no variable gives one."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from vmaccel.service.context import ENV_PASSPHRASE, Context
from vmaccel.vocabulary.errors import PassphraseError


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


def context(
    repo: Path | None = None,
    lock_wait: float = 0.0,
    confirm_passphrase: bool = False,
    env: Mapping[str, str] | None = None,
) -> Context:
    """The context of one command: ``--repo`` (else ``$VMACCEL_REPO``), ``--lock-wait``."""
    env = os.environ if env is None else env
    return Context.from_env(env, repo, lock_wait, passphrase_source(env, confirm_passphrase))

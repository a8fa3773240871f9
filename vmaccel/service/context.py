"""What every use case needs, built once by the application and passed down.

Nothing below the application reads ``os.environ`` or prompts: a :class:`Context` carries the
environment it was built from and a passphrase callable that the application supplies (a
prompt on a terminal, a variable, a secret store).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vmaccel.catalog.repository import Repository
from vmaccel.vocabulary.errors import UsageError

ENV_REPO = "VMACCEL_REPO"
ENV_PASSPHRASE = "VMACCEL_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
ENV_CONFIG_DIR = "VMACCEL_CONFIG_DIR"


def _no_passphrase() -> str:
    return ""


@dataclass(frozen=True)
class Context:
    """``repo`` is absolute (or None when not given); ``lock_wait`` in seconds; ``passphrase``
    is called only when an encrypted repository is opened; ``config_dir`` holds the vCenter
    registry; ``env`` is the environment (password variables are read from it)."""

    repo: Path | None
    lock_wait: float = 0.0
    passphrase: Callable[[], str] = field(default=_no_passphrase, repr=False)
    config_dir: Path = Path("~/.config/vmaccel")
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        repo: Path | None = None,
        lock_wait: float = 0.0,
        passphrase: Callable[[], str] = _no_passphrase,
    ) -> Context:
        """``repo`` defaults to ``$VMACCEL_REPO``, the config directory to
        ``$VMACCEL_CONFIG_DIR`` or ``~/.config/vmaccel``."""
        if repo is None and env.get(ENV_REPO):
            repo = Path(env[ENV_REPO])
        home = Path(env.get("HOME") or Path.home())
        config_dir = Path(env.get(ENV_CONFIG_DIR) or home / ".config" / "vmaccel")
        return cls(
            repo=repo.absolute() if repo else None,
            lock_wait=lock_wait,
            passphrase=passphrase,
            config_dir=config_dir,
            env=dict(env),
        )

    def require_repo(self) -> Path:
        if self.repo is None:
            raise UsageError(f"no repository given: pass --repo PATH or set {ENV_REPO}")
        return self.repo

    def open(
        self, write: bool = False, use_reserve: bool = False, lease: str | None = None
    ) -> Repository:
        """The repository, for reading, for maintenance (``write``: the one maintenance
        writer) or as a backup writer under a lease (``lease="backup"``), waiting
        ``lock_wait`` seconds for a conflicting holder (see
        :meth:`~vmaccel.catalog.repository.Repository.open`). Use as a context manager."""
        return Repository.open(
            self.require_repo(),
            self.passphrase,
            write=write,
            lock_wait=self.lock_wait,
            use_reserve=use_reserve,
            lease=lease,
        )

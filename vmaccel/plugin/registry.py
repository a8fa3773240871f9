"""The vCenters a user has added: ``<config dir>/vcenters.json`` (mode 0600).

Passwords are never stored in plaintext where others can read them: either only the *name*
of an environment variable is stored (``--password-env``), or the password goes to the
system keyring when the ``keyring`` package and a backend are present, else to
``<config dir>/secrets/<name>`` with mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vmaccel.catalog.durable import write_file_durably
from vmaccel.plugin.vcenter.models import Endpoint, TlsTrust
from vmaccel.vocabulary.errors import NotFound, UsageError

KEYRING_SERVICE = "vmaccel"


@dataclass(frozen=True)
class VCenterEntry:
    name: str
    host: str  # host[:port]
    user: str
    thumbprint: str | None = None
    ca_file: str | None = None
    password_env: str | None = None
    password_store: str | None = None  # "keyring" or "file"

    @property
    def trust(self) -> TlsTrust:
        return TlsTrust(self.thumbprint, self.ca_file)


def parse_url(url: str) -> str:
    """``https://HOST[:PORT]/sdk`` -> ``HOST[:PORT]``."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"{url!r} is not an https://HOST[:PORT]/sdk URL")
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname


class Registry:
    def __init__(self, config_dir: Path) -> None:
        self.dir = config_dir
        self.file = config_dir / "vcenters.json"

    def entries(self) -> dict[str, VCenterEntry]:
        if not self.file.exists():
            return {}
        raw: dict[str, dict[str, Any]] = json.loads(self.file.read_text())
        return {name: VCenterEntry(**v) for name, v in raw.items()}

    def get(self, name: str) -> VCenterEntry:
        entry = self.entries().get(name)
        if entry is None:
            raise NotFound(f"no vCenter named {name!r}; add it with `vmaccel vcenter add`")
        return entry

    def save(self, entry: VCenterEntry, password: str | None) -> VCenterEntry:
        """Store ``entry`` (and the password, unless it comes from an environment variable)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if password is not None and entry.password_env is None:
            entry = VCenterEntry(
                **{**asdict(entry), "password_store": self._store(entry.name, password)}
            )
        entries = self.entries()
        entries[entry.name] = entry
        data = json.dumps({n: asdict(e) for n, e in sorted(entries.items())}, indent=2)
        write_file_durably(self.file, data.encode() + b"\n", 0o600)
        return entry

    def password(self, entry: VCenterEntry, env: Mapping[str, str]) -> str:
        if entry.password_env is not None:
            value = env.get(entry.password_env)
            if value is None:
                raise UsageError(
                    f"vCenter {entry.name!r} takes its password from ${entry.password_env}, "
                    "which is not set"
                )
            return value
        if entry.password_store == "keyring":  # noqa: S105 - a store kind, not a password
            import keyring

            value = keyring.get_password(KEYRING_SERVICE, entry.name)
            if value is None:
                raise NotFound(f"the keyring has no password for vCenter {entry.name!r}")
            return str(value)
        path = self.dir / "secrets" / entry.name
        if not path.exists():
            raise NotFound(f"no stored password for vCenter {entry.name!r}; add it again")
        return path.read_text().rstrip("\n")

    def endpoint(self, name: str, env: Mapping[str, str]) -> Endpoint:
        entry = self.get(name)
        return Endpoint(entry.host, entry.user, self.password(entry, env), entry.trust)

    def _store(self, name: str, password: str) -> str:
        if _keyring_set(name, password):
            return "keyring"
        secrets = self.dir / "secrets"
        secrets.mkdir(exist_ok=True, mode=0o700)
        secrets.chmod(0o700)
        write_file_durably(secrets / name, password.encode() + b"\n", 0o600)
        return "file"


def _keyring_set(name: str, password: str) -> bool:
    """Store in the system keyring; False when there is none (package or backend missing)."""
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:
        return False
    try:
        keyring.set_password(KEYRING_SERVICE, name, password)
    except KeyringError:
        return False
    return True

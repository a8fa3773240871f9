"""The on-disk state of instant sessions: one JSON file per session, written before each step.

Layout, under ``<config dir>/instant/``::

    nfs/                  the NFS server's state (vmaccel.plugin.nfsexport)
    <session>/session.json  this module's record
    <session>/mnt/        the writable mount of the backup (FUSE)
    <session>/overlay/    its copy-on-write overlays (guest writes)

Contract (must): every step of ``instant start`` records what it is about to create *before*
creating it (the mount point and pid, the export path, the datastore name, the VM name), and
:func:`save` is atomic and durable (temporary file, fsync, rename, directory fsync). So after
a crash or ``kill -9`` at any point, the record names a superset of what exists, and
``instant stop`` can undo each step idempotently. A session's record is deleted last.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vmaccel.vocabulary.errors import NotFound, UsageError

STATES = ("starting", "running", "migrating", "stopping", "failed")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


class SessionNotFound(NotFound):
    """No instant session of that name."""


@dataclass(frozen=True)
class InstantSession:
    """One instant session. ``name`` is the new VM's name; ``datastore`` is ``vmaccel-ir-<id>``.
    Optional fields stay None until their step is about to run; times are Unix seconds."""

    name: str
    id: str
    repo: str
    backup_id: int
    source_vm: str
    vcenter: str
    host: str
    created: float
    state: str = "starting"
    mount_pid: int | None = None
    export_path: str | None = None
    nfs_address: str | None = None
    datastore: str | None = None
    vm_moref: str | None = None
    vm_created: bool = False
    migrated_to: str | None = None
    error: str | None = None
    owner: str | None = None  # who started it through the API (None: the CLI, or unknown)

    def dir(self, root: Path) -> Path:
        return root / self.name

    def mountpoint(self, root: Path) -> Path:
        return root / self.name / "mnt"

    def overlay_dir(self, root: Path) -> Path:
        return root / self.name / "overlay"

    def but(self, **changes: Any) -> InstantSession:
        return replace(self, **changes)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"{name!r} cannot name an instant session: use letters, digits, '.', '_' and '-' "
            "(at most 80, starting with a letter or digit)"
        )
    return name


def save(root: Path, session: InstantSession) -> InstantSession:
    """Write the session's record atomically and durably; returns ``session``."""
    where = session.dir(root)
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = where / "session.json"
    tmp = where / "session.json.tmp"
    data = json.dumps(asdict(session), indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    dfd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return session


def load(root: Path, name: str) -> InstantSession:
    path = root / check_name(name) / "session.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise SessionNotFound(f"no instant session named {name!r}") from None
    known = InstantSession.__dataclass_fields__
    return InstantSession(**{k: v for k, v in raw.items() if k in known})


def sessions(root: Path) -> list[InstantSession]:
    """Every recorded session, by name."""
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob("*/session.json")):
        try:
            out.append(load(root, path.parent.name))
        except (SessionNotFound, UsageError, ValueError, TypeError):
            continue
    return out


def forget(root: Path, session: InstantSession) -> None:
    """Delete the session's record (its directory must hold nothing else by then)."""
    where = session.dir(root)
    for name in ("session.json", "session.json.tmp"):
        (where / name).unlink(missing_ok=True)
    for sub in ("mnt",):
        p = where / sub
        if p.is_dir():
            p.rmdir()
    where.rmdir()

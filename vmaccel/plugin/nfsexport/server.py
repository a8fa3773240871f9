"""nfs-ganesha as the NFS v3 server of instant recovery: configuration, start, exports, stop.

Why ganesha: the kernel's nfsd is the usual way to export a FUSE mount (with an explicit
``fsid=`` and stable inodes), but it is not always there (containers, micro-VM kernels without
nfsd); ganesha runs in user space everywhere, and its VFS backend exports a FUSE mount under
the same conditions as nfsd (``name_to_handle_at`` on the FUSE file system, nodes kept alive
by the FUSE process, an explicit ``Filesystem_id``).

On disk, in ``settings.state_dir`` (created 0700)::

    exports.json   the exports: [{"id", "path", "client", "pseudo"}], rewritten atomically
    ganesha.conf   generated from exports.json; never edited by hand
    ganesha.pid    ganesha's pid file (ganesha writes it)
    ganesha.log    ganesha's log
    .lock          flock()ed around every change

Contract: :meth:`ExportServer.add` returns once the export answers MOUNT requests; the server
is started by the first export and stopped when the last one is removed. Between, exports
are added and removed by rewriting the configuration and sending SIGHUP (ganesha rereads its
export list; the other exports keep serving). Protocol is NFS v3 over TCP only, each export
read-write for its one client with ``no_root_squash`` (ESXi mounts as root and writes lock
files), ``sec=sys``. Ganesha registers with the host's portmapper (rpcbind), which ESXi asks
for the MOUNT port; :func:`ensure_rpcbind` starts rpcbind when none answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmaccel.vocabulary.errors import MountError

logger = logging.getLogger(__name__)

RELOADED = "Reread exports complete"
FSID_MAJOR = 0x766D  # "vm": Filesystem_id = FSID_MAJOR.<export id>


class ExportError(MountError):
    """The NFS export could not be set up or taken down."""


@dataclass(frozen=True)
class ExportSettings:
    """Where the server keeps its state and how it listens.

    ``bind_address``: the local address to serve on (all by default). ``nfs_port`` and
    ``mount_port``: TCP ports; ESXi expects NFS on 2049 and finds MOUNT through rpcbind.
    ``timeout``: seconds to wait for the server to start or reload.
    """

    state_dir: Path
    bind_address: str = "0.0.0.0"  # noqa: S104 - an NFS server for ESXi hosts elsewhere
    nfs_port: int = 2049
    mount_port: int = 20048
    binary: str = "ganesha.nfsd"
    timeout: float = 30.0


@dataclass(frozen=True)
class Export:
    """One export: ``path`` served to ``client`` (an address) as ``path`` itself."""

    id: int
    path: Path
    client: str

    @property
    def fsid(self) -> str:
        return f"{FSID_MAJOR}.{self.id}"

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "path": str(self.path), "client": self.client}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Export:
        return cls(int(str(d["id"])), Path(str(d["path"])), str(d["client"]))


def render_config(settings: ExportSettings, exports: list[Export]) -> str:
    """ganesha.conf for ``exports`` (pure; see the module docstring for the choices)."""
    core = f"""NFS_CORE_PARAM {{
    Protocols = 3;
    Bind_addr = {settings.bind_address};
    NFS_Port = {settings.nfs_port};
    MNT_Port = {settings.mount_port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
NFSV4 {{ Graceless = true; }}
"""
    blocks = [
        f"""EXPORT {{
    Export_Id = {e.id};
    Path = {json.dumps(str(e.path))};
    Pseudo = {json.dumps(str(e.path))};
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    Access_Type = None;
    Squash = No_Root_Squash;
    Filesystem_id = {e.fsid};
    CLIENT {{ Clients = {e.client}; Access_Type = RW; }}
    FSAL {{ Name = VFS; }}
}}
"""
        for e in exports
    ]
    return core + "".join(blocks)


class ExportServer:
    """The ganesha server of one state directory (see the module docstring)."""

    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        self.dir = settings.state_dir
        self.conf, self.pidfile = self.dir / "ganesha.conf", self.dir / "ganesha.pid"
        self.log, self.table = self.dir / "ganesha.log", self.dir / "exports.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def exports(self) -> list[Export]:
        try:
            raw = json.loads(self.table.read_text())
        except FileNotFoundError:
            return []
        return [Export.from_json(d) for d in raw]

    def _save(self, exports: list[Export]) -> None:
        tmp = self.table.with_suffix(".tmp")
        tmp.write_text(json.dumps([e.to_json() for e in exports], indent=1))
        tmp.replace(self.table)
        conf_tmp = self.conf.with_suffix(".tmp")
        conf_tmp.write_text(render_config(self.settings, exports))
        conf_tmp.replace(self.conf)

    def pid(self) -> int | None:
        """The running server's pid, or None."""
        try:
            pid = int(self.pidfile.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return None
        if pid <= 0 or not _alive(pid) or "ganesha" not in _comm(pid):
            return None
        return pid

    def add(self, path: Path, client: str) -> Export:
        """Export ``path`` (a directory) read-write to ``client``; returns once it serves."""
        if not path.is_dir():
            raise ExportError(f"cannot export {path}: not a directory")
        with self._locked():
            exports = self.exports()
            same = [e for e in exports if e.path == path and e.client == client]
            if same:
                return same[0]
            export = Export(max((e.id for e in exports), default=0) + 1, path, client)
            exports.append(export)
            self._save(exports)
            self._apply(exports)
            logger.info("exported %s to %s (export %d)", path, client, export.id)
            return export

    def remove(self, export_id: int) -> bool:
        """Stop serving export ``export_id`` (stopping the server with the last one).
        Returns whether it existed. Idempotent."""
        with self._locked():
            exports = self.exports()
            left = [e for e in exports if e.id != export_id]
            self._save(left)
            self._apply(left)
            return len(left) != len(exports)

    def remove_path(self, path: Path) -> bool:
        """Stop serving every export of ``path``; returns whether there was one. Idempotent."""
        with self._locked():
            exports = self.exports()
            left = [e for e in exports if e.path != path]
            if len(left) != len(exports) or (not left and self.pid() is not None):
                self._save(left)
                self._apply(left)
            return len(left) != len(exports)

    def _apply(self, exports: list[Export]) -> None:
        pid = self.pid()
        if not exports:
            if pid is not None:
                _stop(pid, self.settings.timeout)
            self.pidfile.unlink(missing_ok=True)
            return
        if pid is None:
            self._start()
            return
        mark = _count(self.log, RELOADED)
        os.kill(pid, signal.SIGHUP)
        _wait(lambda: _count(self.log, RELOADED) > mark, self.settings.timeout,
              f"the NFS server to reload its exports (see {self.log})")

    def _start(self) -> None:
        binary = shutil.which(self.settings.binary)
        if binary is None:
            raise ExportError(f"{self.settings.binary} is not installed: apt install nfs-ganesha "
                              "nfs-ganesha-vfs")
        ensure_rpcbind(self.settings.timeout)
        self.pidfile.unlink(missing_ok=True)
        done = subprocess.run(  # noqa: S603 - argv list, no shell; ganesha daemonizes itself
            [binary, "-f", str(self.conf), "-L", str(self.log), "-p", str(self.pidfile),
             "-N", "NIV_EVENT"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ExportError(f"the NFS server did not start: {done.stderr.strip()}")
        address = "127.0.0.1" if self.settings.bind_address in ("0.0.0.0", "") else (  # noqa: S104
            self.settings.bind_address)
        _wait(lambda: _listening(address, self.settings.mount_port)
              and _listening(address, self.settings.nfs_port), self.settings.timeout,
              f"the NFS server to listen on ports {self.settings.nfs_port} and "
              f"{self.settings.mount_port} (see {self.log})")
        logger.info("NFS server started (pid %s)", self.pid())

    def stop(self) -> None:
        """Stop the server whatever it exports (the exports table is kept)."""
        with self._locked():
            pid = self.pid()
            if pid is not None:
                _stop(pid, self.settings.timeout)
            self.pidfile.unlink(missing_ok=True)


def ensure_rpcbind(timeout: float = 10.0) -> None:
    """Start rpcbind if no portmapper answers on this host (ganesha registers with it)."""
    if _listening("127.0.0.1", 111):
        return
    tool = shutil.which("rpcbind") or "/usr/sbin/rpcbind"
    if not Path(tool).exists():
        raise ExportError("no portmapper is running and rpcbind is not installed: "
                          "apt install rpcbind")
    subprocess.run([tool, "-w"], capture_output=True, check=False)  # noqa: S603 - forks itself
    _wait(lambda: _listening("127.0.0.1", 111), timeout, "rpcbind to start")


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _stop(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    logger.info("NFS server (pid %d) stopped", pid)


def _count(path: Path, needle: str) -> int:
    try:
        return path.read_text(errors="replace").count(needle)
    except FileNotFoundError:
        return 0


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise ExportError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)

"""Mounting a repository: set up the tree, run FUSE until unmounted, take it down cleanly.

With ``overlay_dir`` the mount is writable: image files take writes into copy-on-write
overlays there (:mod:`vmaccel.fusemount.overlay`), which are synced and, unless ``keep_overlay``,
deleted at unmount. The repository itself is only ever read.

:func:`serve` blocks in the calling (main) thread until the file system is unmounted
(``vmaccel umount``, ``fusermount -u``) or the process gets SIGINT/SIGTERM/SIGHUP, which
libfuse turns into a clean unmount. Open image readers are closed on the way out. The
repository stays open (and its readers' lock held, so gc cannot delete packs under the mount)
for the whole time; the caller owns and closes it.

:func:`start_detached` is the background mode: it runs a foreground mount command in a new
session and returns once the mount point is live, so a caller never sees a half-ready mount;
if the command fails first, its error output becomes the :class:`MountError` message.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vmaccel.catalog.repository import Repository
from vmaccel.fusemount.adapter import TreeOperations
from vmaccel.fusemount.binding import FuseOptions
from vmaccel.fusemount.binding import serve as serve_fuse
from vmaccel.fusemount.guestfiles import GuestFiles
from vmaccel.fusemount.openfiles import OpenFiles
from vmaccel.fusemount.overlay import OverlayError, OverlayImage, OverlaySet
from vmaccel.fusemount.pattern import PatternedImage
from vmaccel.fusemount.repoview import RepositoryView
from vmaccel.fusemount.scratch import Scratch
from vmaccel.fusemount.source import ImageStream
from vmaccel.fusemount.tree import VirtualTree
from vmaccel.vocabulary.errors import MountError, MountpointError

logger = logging.getLogger(__name__)

FSTYPE = "fuse.vmaccel"
# The point reader of an image (random reads, see fusemount.pattern): no read-ahead, and a
# cache of a few chunks' worth (bytes) for reads that fall into a chunk just decoded.
POINT_READER = {"readahead_bytes": 0, "cache_bytes": 16 * 1024 * 1024}
# The bulk reader (sequential reads): its cache holds the read-ahead window (16 MiB, see
# ImageReader) and the chunks being copied out, not more: with the library's default 64 MiB
# the mount's peak RSS was 175-177 MiB on the 4 GiB bench disk, with 32 MiB 137-152 MiB at
# the same sequential rate (bench/mount.py).
BULK_READER = {"cache_bytes": 32 * 1024 * 1024}
# glibc gives each thread that allocates its own malloc arena, up to 8 per core, and freed
# 64 KiB chunks stay in them; FUSE's request threads and the readers' workers made many.
# Two arenas: 125-126 MiB on the 4 GiB disk and 122-126 MiB on a 64 GiB one, same throughput.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


@dataclass(frozen=True)
class MountOptions:
    """What to show and how. ``vm``/``backup_id`` limit the tree; ``ttl`` (seconds) is how
    stale the list of backups may get; ``library`` picks libfuse (``fuse3``/``fuse``);
    ``readahead_kib`` is the kernel read-ahead to ask for (0: leave the kernel default).
    ``direct_io`` applies to image files only (measured: 0.87x the in-process reader's rate
    with it, 0.64x through the page cache); other files always use the page cache.
    ``overlay_dir`` makes image files writable (see the module docstring). ``nfs_export``:
    the mount is served over NFS (instant recovery), so libfuse never forgets a node id
    (``noforget``): an NFS file handle names a node id, and a forgotten one would make the
    client's handle stale (ESTALE). The cost is one node per path ever looked up. With an
    overlay, backup directories then also take new files (the hypervisor's lock files), kept
    in ``<overlay_dir>/scratch`` (:mod:`vmaccel.fusemount.scratch`)."""

    vm: str | None = None
    backup_id: int | None = None
    allow_other: bool = False
    ttl: float = 1.0
    keep_cache: bool = True
    direct_io: bool = True
    debug: bool = False
    library: str | None = "fuse3"
    readahead_kib: int = 1024
    guest_files: bool = True
    overlay_dir: Path | None = None
    keep_overlay: bool = False
    nfs_export: bool = False


def check_mountpoint(mountpoint: Path) -> None:
    """Raise :class:`MountpointError` unless ``mountpoint`` is an unused directory."""
    if not mountpoint.is_dir():
        raise MountpointError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise MountpointError(f"{mountpoint} is already a mount point; unmount it first")


def serve(repo: Repository, mountpoint: Path, options: MountOptions) -> None:
    """Mount ``repo`` read-only at ``mountpoint`` and block until it is unmounted."""
    check_mountpoint(mountpoint)
    limit_malloc_arenas(MALLOC_ARENAS)  # before the readers' and FUSE's threads start
    view = RepositoryView(repo, **BULK_READER)
    open_image = image_opener(repo, view)
    guest = GuestFiles(view.open_image) if options.guest_files else None
    tree = VirtualTree(
        view, vm=options.vm, backup_id=options.backup_id, ttl=options.ttl,
        uid=os.getuid(), gid=os.getgid(), guest=guest,
    )
    overlays = open_overlays(repo, options)
    if overlays is None:
        files = OpenFiles(open_image)
    else:
        ov = overlays

        def writable_image(image_id: int) -> ImageStream:
            return OverlayImage(open_image(image_id), ov, image_id)

        files = OpenFiles(writable_image)
    scratch = None
    if overlays is not None and options.nfs_export:
        scratch = Scratch(overlays.directory / "scratch")
    ops = TreeOperations(
        tree, files, keep_cache=options.keep_cache, direct_io=options.direct_io,
        writable=overlays is not None, scratch=scratch,
    )
    fuse_options = FuseOptions(
        fsname=f"vmaccel:{repo.path}", allow_other=options.allow_other, debug=options.debug,
        read_only=overlays is None, noforget=options.nfs_export,
    )
    if options.readahead_kib:
        threading.Thread(
            target=tune_readahead, args=(mountpoint, options.readahead_kib), daemon=True
        ).start()
    try:
        serve_fuse(ops, str(mountpoint), fuse_options, options.library)
    except RuntimeError as exc:  # the binding's report of a failed fuse_main
        raise MountError(f"mounting {mountpoint} failed ({exc}); see the messages above") from exc
    finally:
        files.close_all()
        if guest is not None:
            guest.close()
        if overlays is not None:
            overlays.close()
    logger.info("unmounted %s", mountpoint)


def image_opener(repo: Repository, view: RepositoryView) -> Callable[[int], ImageStream]:
    """How the mount opens an image file's stream: a :class:`PatternedImage` whose bulk reader
    comes from ``view`` and whose point reader (opened on first use) reads ahead nothing."""
    point_view = RepositoryView(repo, **POINT_READER)

    def open_image(image_id: int) -> ImageStream:
        return PatternedImage(view.open_image(image_id), partial(point_view.open_image, image_id))

    return open_image


def open_overlays(repo: Repository, options: MountOptions) -> OverlaySet | None:
    """The overlay set of a writable mount (None for a read-only one). OVERLAY_DIR must not
    lie inside the repository: nothing a mount writes may land there."""
    if options.overlay_dir is None:
        return None
    where = options.overlay_dir.resolve()
    if where == repo.path.resolve() or repo.path.resolve() in where.parents:
        raise OverlayError(f"the overlay directory {where} is inside the repository; use another")
    return OverlaySet(where, repo.config.id, keep=options.keep_overlay)


def limit_malloc_arenas(count: int) -> bool:
    """Cap the C allocator's arenas for the rest of the process (glibc's ``M_ARENA_MAX``).
    Best effort: False where the C library has no ``mallopt`` or refuses the setting."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, count))


def tune_readahead(mountpoint: Path, kib: int, timeout: float = 10.0) -> bool:
    """Raise the kernel read-ahead of the mount at ``mountpoint`` to ``kib`` KiB, once it is up.

    FUSE mounts get the kernel's default window (128 KiB), so sequential reads arrive as
    many small requests; a larger window means fewer, larger ones (measured: about 1.3x the
    throughput at 1 MiB). The knob is ``/sys/class/bdi/<dev>/read_ahead_kb``, writable by
    root only; elsewhere this is a no-op. Best effort: returns whether it was applied.
    """
    deadline = time.monotonic() + timeout
    while not is_mounted(mountpoint):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    try:
        dev = mountpoint.stat().st_dev
        knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        knob.write_text(f"{kib}\n")
    except OSError as exc:
        logger.debug("kernel read-ahead of %s left as is: %s", mountpoint, exc)
        return False
    logger.debug("kernel read-ahead of %s set to %d KiB", mountpoint, kib)
    return True


def mounts() -> dict[Path, str]:
    """Mounted file systems of this mount namespace: mount point -> file system type."""
    out: dict[Path, str] = {}
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                out[Path(_unescape(fields[1]))] = fields[2]
    return out


def is_mounted(mountpoint: Path) -> bool:
    return mountpoint.absolute() in mounts()


def umount(mountpoint: Path, lazy: bool = False) -> None:
    """Unmount a vmaccel mount. Refuses anything else mounted there."""
    path = mountpoint.absolute()
    fstype = mounts().get(path)
    if fstype is None:
        raise MountpointError(f"{path} is not mounted")
    if fstype != FSTYPE:
        raise MountpointError(f"{path} is a {fstype} mount, not a vmaccel one; not touching it")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", *(["-z"] if lazy else []), str(path)] if tool else ["umount", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603 - argv list, no shell; tool from PATH
    if done.returncode != 0:
        raise MountpointError(f"unmounting {path} failed: {done.stderr.strip() or done.stdout}")


def start_detached(
    command: Sequence[str], mountpoint: Path, env: Mapping[str, str], timeout: float = 30.0
) -> int:
    """Run ``command`` (a foreground mount of ``mountpoint``) detached; return its pid once the
    mount is live. Raises :class:`MountError` with its output if it exits or times out first."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(  # noqa: S603 - our own mount command as an argv list, no shell
            list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env=dict(env), start_new_session=True, close_fds=True,
        )
        deadline = time.monotonic() + timeout
        while not is_mounted(mountpoint):
            if proc.poll() is not None:
                log.seek(0)
                text = log.read().decode(errors="replace").strip()
                raise MountError(text or f"the mount process exited with {proc.returncode}")
            if time.monotonic() > deadline:
                proc.terminate()
                raise MountError(f"{mountpoint} did not become ready within {timeout:.0f} s")
            time.sleep(0.05)
    return proc.pid


def _unescape(field: str) -> str:
    # /proc/self/mounts escapes space, tab, newline and backslash as octal (\040 ...).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)

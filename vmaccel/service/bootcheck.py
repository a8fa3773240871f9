"""Boot-tested restore points: ``vmaccel verify --boot BACKUP``.

The restore point is mounted read-only (:mod:`vmaccel.fusemount`, in a detached process, as
``vmaccel mount`` does), its ``.raw`` image files are booted under qemu
(:mod:`vmaccel.plugin.boot`) with the firmware, memory and disk order of the saved
configuration, and the outcome is recorded with the backup: the screenshot as an object of its
own, the :class:`~vmaccel.catalog.bootcheck.BootCheck` in the backup's meta.

Why qemu's ``snapshot=on`` over the read-only mount, not the mount's copy-on-write overlay:
the FUSE mount stays read-only (the kernel refuses every write, so nothing the guest does can
reach the repository, not even through a bug in the overlay), the guest's writes go to a qcow2
file qemu creates and unlinks at once in this test's private temporary directory (gone with
qemu, even when it is killed), and no write crosses FUSE (the overlay's 64 KiB
read-modify-write would slow the boot).

Nothing is left behind: the mount is taken down and its process reaped, and the temporary
directory (serial and firmware logs, the QMP socket, the UEFI variable store, the screenshot
file) is deleted, whatever happened. Only the recording opens the repository for writing
(a backup writer lease, as ``backups ack``), after the mount is gone; the screenshot is stored
before the meta names it (a crash between leaves an unnamed screenshot that the next test of
the backup replaces and prune deletes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast, get_args

from vmaccel.catalog.bootcheck import BootCheck, get_screenshot, put_screenshot
from vmaccel.catalog.index import BackupRow, ImageRow
from vmaccel.plugin.boot.console import DEFAULT_MARKER
from vmaccel.plugin.boot.machine import MachineSpec, order_disks, parse_config
from vmaccel.plugin.boot.runner import Accel, BootOptions, BootOutcome, boot
from vmaccel.service.backups import resolve_backup
from vmaccel.service.browse import MountRequest, mount, umount
from vmaccel.service.context import Context
from vmaccel.vocabulary.errors import MountError, NotFound, UsageError

logger = logging.getLogger(__name__)

REAP_WAIT = 10.0  # seconds the mount process gets to exit after the unmount


@dataclass(frozen=True)
class BootRequest:
    """``backup``: any backup reference; ``timeout``: seconds from the emulator's start to the
    marker; ``expect``: the marker (a regular expression for the serial console); ``accel``:
    ``auto`` (KVM when usable, else TCG), ``kvm`` or ``tcg``."""

    backup: str
    timeout: float = 300.0
    expect: str = DEFAULT_MARKER
    accel: str = "auto"


@dataclass(frozen=True)
class BootReport:
    """The boot test of one backup: its ``check`` (as recorded), the ``disks`` in the order
    they were attached (first boots first) and the end of the serial ``console``.
    ``to_dict`` is the ``verify --boot`` document of docs/json.md."""

    backup: BackupRow
    disks: tuple[str, ...]
    check: BootCheck
    console: str

    @property
    def passed(self) -> bool:
        return self.check.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup.id,
            "uuid": self.backup.uuid,
            "vm": self.backup.vm,
            "disks": list(self.disks),
            **self.check.to_json(),
            "console": self.console,
        }

    def summary(self) -> list[str]:
        c = self.check
        head = f"backup {self.backup.id} of {self.backup.vm}: "
        how = f"({c.firmware}, {c.accel}, disks {', '.join(self.disks)})"
        if c.passed:
            lines = [head + f"booted: marker seen after {c.seconds:.1f} s {how}"]
        else:
            lines = [head + f"did not boot: {c.reason} after {c.seconds:.1f} s {how}"]
            lines += [f"  {c.detail}"] if c.detail else []
        if c.screenshot:
            lines.append(f"  screenshot stored ({c.screenshot_format}): {c.screenshot}")
        return lines


def verify_boot(ctx: Context, request: BootRequest) -> BootReport:
    """Boot the restore point ``request.backup`` names and record the outcome with it (see
    the module docstring). Raises :class:`NotFound` for a backup without disks,
    :class:`~vmaccel.vocabulary.errors.MountError` when the mount fails,
    :class:`~vmaccel.vocabulary.errors.BootTestError` when qemu cannot run the test."""
    with ctx.open() as r:
        backup = resolve_backup(r, request.backup)
        images = r.images(backup)
    if not images:
        raise NotFound(f"backup {backup.id} of {backup.vm} has no disks to boot")
    saved = parse_config(backup.meta.config_xml)
    options = BootOptions(request.timeout, request.expect, _accel(request.accel))
    with tempfile.TemporaryDirectory(prefix="vmaccel-boot-") as tmp:
        work = Path(tmp)
        with _mounted(ctx, backup, work / "mnt") as root:
            disks = order_disks(
                [(i.meta.key, root / f"{_file_name(i)}.raw") for i in images], saved.disk_order
            )
            outcome = boot(MachineSpec.of(disks, saved), options, work / "run")
    names = tuple(_disk_of(images, p) for p in disks)
    check = _record(ctx, backup, outcome, request.expect)
    return BootReport(backup, names, check, outcome.console)


def _accel(name: str) -> Accel:
    for accel in get_args(Accel):
        if name == accel:
            return cast(Accel, accel)
    raise UsageError(f"unknown acceleration {name!r}: use auto, kvm or tcg")


def load_screenshot(ctx: Context, ref: str) -> tuple[bytes, str]:
    """The screenshot of the last boot test of backup ``ref`` and its format (``png`` or
    ``ppm``); :class:`NotFound` when the backup has none."""
    with ctx.open() as r:
        backup = resolve_backup(r, ref)
        check = backup.meta.boot
        if check is None or check.screenshot is None:
            raise NotFound(f"backup {backup.id} of {backup.vm} has no boot-test screenshot")
        return get_screenshot(r.store, r.codec, check.screenshot), check.screenshot_format or ""


@contextlib.contextmanager
def _mounted(ctx: Context, backup: BackupRow, mountpoint: Path) -> Iterator[Path]:
    """The directory of ``backup`` in a read-only mount of only that backup at
    ``mountpoint``; unmounted (and its process reaped) on the way out."""
    from vmaccel.fusemount.tree import safe_name

    mountpoint.mkdir()
    done = mount(ctx, MountRequest(mountpoint, backup=str(backup.id)))
    try:
        yield mountpoint / safe_name(backup.vm) / "latest"
    finally:
        try:
            umount(mountpoint)
        except MountError as exc:  # still busy: detach now, the kernel finishes it
            logger.warning("%s; unmounting lazily", exc)
            umount(mountpoint, lazy=True)
        if done.pid is not None:
            _reap(done.pid)


def _reap(pid: int) -> None:
    """Wait for the mount process ``pid`` (our child) to exit, REAP_WAIT seconds at most."""
    deadline = time.monotonic() + REAP_WAIT
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return  # reaped elsewhere (subprocess's own bookkeeping)
        time.sleep(0.05)
    logger.warning("the mount process %d did not exit within %.0f s", pid, REAP_WAIT)


def _file_name(image: ImageRow) -> str:
    from vmaccel.fusemount.tree import safe_name

    return safe_name(image.disk)


def _disk_of(images: list[ImageRow], path: Path) -> str:
    return next(i.disk for i in images if f"{_file_name(i)}.raw" == path.name)


def _record(ctx: Context, backup: BackupRow, outcome: BootOutcome, expect: str) -> BootCheck:
    """Store the screenshot, then the check in the backup's meta (re-read under the lease, so
    a concurrent ``backups ack`` is kept)."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with ctx.open(lease="backup") as r:
        key = None
        if outcome.screenshot is not None:
            key = put_screenshot(r.store, r.codec, backup.uuid, outcome.screenshot)
        check = BootCheck(
            outcome.passed, outcome.reason, outcome.detail, outcome.seconds, now, expect,
            outcome.firmware, outcome.accel, key,
            outcome.screenshot_format if key else None,
        )  # fmt: skip
        current = r.backup(backup.id)
        r.set_backup_meta(current, replace(current.meta, boot=check))
    return check

"""Booting disk images under qemu and judging the boot: :func:`boot`.

One boot: qemu starts (see :mod:`vmaccel.plugin.boot.machine` for the machine), the serial
console and the firmware's debug port are read every :data:`POLL` seconds and judged
(:func:`vmaccel.plugin.boot.console.judge`), and qemu's state is asked over QMP every
:data:`STATUS_EVERY` seconds. The boot ends at the first of: the marker (pass), a failure the
console shows (no bootable disk, kernel panic), the guest stopping (powered off, reset with
``-no-reboot`` semantics, or crashed the emulator) or the timeout. Then the screen is saved
with QMP ``screendump`` (PNG where this qemu can, else PPM), qemu is told to quit (and killed
if it does not within :data:`QUIT_WAIT` seconds), and its files are left in ``workdir`` for
the caller to delete.

Acceleration: ``auto`` uses KVM when ``/dev/kvm`` opens and answers, TCG otherwise. A host
whose KVM opens but cannot run a guest (nested virtualisation without the features qemu needs:
qemu stops with ``internal-error`` or exits) gets the boot again under TCG, with a warning in
the log; the time to the marker is then TCG's.

The disk images are opened read-only; the guest's writes land in qemu's temporary overlay
(``snapshot=on``) inside ``workdir`` (qemu's ``TMPDIR``), which qemu unlinks as it creates it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

from vmaccel.plugin.boot.console import DEFAULT_MARKER, Finding, LogTail, judge, strip_ansi
from vmaccel.plugin.boot.machine import (
    Firmware,
    MachineSpec,
    Workspace,
    find_ovmf,
    qemu_argv,
)
from vmaccel.plugin.boot.qmp import QmpClient, QmpError, socket_pair
from vmaccel.vocabulary.errors import BootTestError, UsageError

logger = logging.getLogger(__name__)

Accel = Literal["auto", "kvm", "tcg"]
POLL = 0.1  # seconds between looks at the console
STATUS_EVERY = 0.5  # seconds between QMP query-status calls
QUIT_WAIT = 10.0  # seconds qemu gets to quit before it is killed
START_WAIT = 30.0  # seconds qemu gets to greet on its QMP socket
_KVM_GET_API_VERSION = 0xAE00
_STOPPED = {"shutdown", "guest-panicked"}  # qemu states of a guest that will not go on


@dataclass(frozen=True)
class BootOptions:
    """``timeout``: seconds from qemu's start to the marker; ``expect``: the marker, a regular
    expression matched against the serial console; ``accel``: ``auto``, ``kvm`` or ``tcg``;
    ``qemu``: the qemu-system-x86_64 binary (name or path)."""

    timeout: float = 300.0
    expect: str = DEFAULT_MARKER
    accel: Accel = "auto"
    qemu: str = "qemu-system-x86_64"


@dataclass(frozen=True)
class BootOutcome:
    """How a boot went. ``passed`` when the marker appeared; otherwise ``reason`` is one of
    ``no bootable disk``, ``kernel panic``, ``guest stopped``, ``timeout`` and ``detail`` the
    text that showed it. ``seconds``: from qemu's start to the marker (or to the failure).
    ``accel`` (``kvm``/``tcg``) and ``firmware`` (``bios``/``efi``) are what ran.
    ``screenshot`` is the screen at the end in ``screenshot_format`` (``png``/``ppm``; both
    None when qemu could not take it). ``console`` is the end of the serial console (at most
    :data:`CONSOLE_TAIL` characters, terminal escapes removed)."""

    passed: bool
    reason: str | None
    detail: str | None
    seconds: float
    accel: str
    firmware: Firmware
    screenshot: bytes | None
    screenshot_format: str | None
    console: str


CONSOLE_TAIL = 2000


class _KvmFailed(Exception):
    """KVM opened but could not run this guest: try TCG."""


def boot(spec: MachineSpec, options: BootOptions, workdir: Path) -> BootOutcome:
    """Boot ``spec`` and judge it (see the module docstring). ``workdir`` is a private
    directory (created when missing) that the caller removes afterwards. Raises
    :class:`UsageError` for a bad marker or timeout, :class:`BootTestError` when the test
    cannot run (no qemu, no OVMF for a UEFI guest, qemu refusing to start)."""
    try:
        marker = re.compile(options.expect)
    except re.error as exc:
        raise UsageError(f"the marker {options.expect!r} is no regular expression: {exc}") from None
    if options.timeout <= 0:
        raise UsageError("the boot timeout must be positive")
    binary = shutil.which(options.qemu)
    if binary is None:
        raise BootTestError(f"{options.qemu} was not found; install qemu-system-x86")
    if options.accel == "auto":
        accels = ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    else:
        accels = [options.accel]
    workdir.mkdir(mode=0o700, exist_ok=True)
    for n, accel in enumerate(accels):
        ws = Workspace(workdir / f"attempt-{n}")
        ws.root.mkdir(mode=0o700)
        try:
            return _boot_once(binary, spec, ws, accel, marker, options.timeout)
        except _KvmFailed as exc:
            if n + 1 == len(accels):
                raise BootTestError(f"KVM could not run the guest: {exc}") from None
            logger.warning("KVM could not run the guest (%s); booting again under TCG", exc)
    raise AssertionError("unreachable")  # the loop returns or raises


def kvm_usable(device: str = "/dev/kvm") -> bool:
    """Whether ``device`` opens read-write and speaks the stable KVM API (version 12)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == 12
    except OSError:
        return False
    finally:
        os.close(fd)


def _boot_once(
    binary: str, spec: MachineSpec, ws: Workspace, accel: str, marker: re.Pattern[str],
    timeout: float,
) -> BootOutcome:  # fmt: skip
    ovmf = None
    if spec.firmware == "efi":
        found = find_ovmf()
        if found is None:
            raise BootTestError("the guest boots with UEFI and OVMF is missing; install ovmf")
        ovmf, template = found
        shutil.copyfile(template, ws.vars)
    ours, theirs = socket_pair()
    argv = qemu_argv(binary, spec, ws, accel, theirs.fileno(), ovmf)
    logger.debug("starting %s", " ".join(argv))
    with ours, open(ws.root / "qemu.log", "wb") as log:
        with theirs:
            proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                pass_fds=(theirs.fileno(),), env=_qemu_env(ws),
            )  # fmt: skip
        started = time.monotonic()
        try:
            return _watch(proc, ours, started, spec, ws, accel, marker, timeout)
        except BaseException:
            proc.kill()  # no screenshot or clean quit to wait for
            raise
        finally:
            _stop(proc)


def _qemu_env(ws: Workspace) -> dict[str, str]:
    """qemu's whole environment: its temporary files (the snapshot overlay) in the workspace;
    nothing of ours (no passphrase variable) reaches it."""
    return {"TMPDIR": str(ws.root), "PATH": os.defpath, "LC_ALL": "C"}


def _watch(
    proc: subprocess.Popen[bytes], sock: socket.socket, started: float, spec: MachineSpec,
    ws: Workspace, accel: str, marker: re.Pattern[str], timeout: float,
) -> BootOutcome:  # fmt: skip
    try:
        qmp = QmpClient(sock, START_WAIT)
    except OSError:
        _qemu_died(proc, ws, accel)
    try:
        finding, stopped = _wait(proc, qmp, ws, accel, marker, started + timeout)
        seconds = time.monotonic() - started
        shot, fmt = _screendump(qmp, ws)
        _quit(qmp)
    finally:
        qmp.close()
    serial = strip_ansi(LogTail(ws.serial).read())
    return _outcome(finding, stopped, seconds, timeout, accel, spec, shot, fmt, serial)


def _wait(
    proc: subprocess.Popen[bytes], qmp: QmpClient, ws: Workspace, accel: str,
    marker: re.Pattern[str], deadline: float,
) -> tuple[Finding | None, str | None]:  # fmt: skip
    """(the finding, None) or (None, qemu's state when the guest stopped) or (None, None) at
    the deadline."""
    serial, debug = LogTail(ws.serial), LogTail(ws.debug)
    next_status = 0.0
    while True:
        finding = judge(serial.read(), debug.read(), marker)
        if finding is not None:
            return finding, None
        now = time.monotonic()
        if now >= deadline:
            return None, None
        if now >= next_status:
            next_status = now + STATUS_EVERY
            if proc.poll() is not None:
                _qemu_died(proc, ws, accel)
            status = str(qmp.command("query-status").get("status"))
            if status == "internal-error" and accel == "kvm":
                raise _KvmFailed("qemu stopped with internal-error")
            if status in _STOPPED or status == "internal-error":
                last = judge(serial.read(), debug.read(), marker)
                return (last, None) if last is not None else (None, status)
        time.sleep(POLL)


def _qemu_died(proc: subprocess.Popen[bytes], ws: Workspace, accel: str) -> NoReturn:
    """qemu exited (or never listened): KVM's fault, or a :class:`BootTestError`."""
    proc.poll()
    text = (ws.root / "qemu.log").read_text(errors="replace").strip()
    why = text.splitlines()[-1] if text else f"exit status {proc.returncode}"
    if accel == "kvm":
        raise _KvmFailed(why)
    raise BootTestError(f"qemu failed: {why}")


def _screendump(qmp: QmpClient, ws: Workspace) -> tuple[bytes | None, str | None]:
    """The screen as (bytes, "png") or, on a qemu without PNG screendumps, (bytes, "ppm")."""
    for fmt in ("png", "ppm"):
        path = ws.screenshot.with_suffix(f".{fmt}")
        args = {"filename": str(path), **({"format": fmt} if fmt == "png" else {})}
        try:
            qmp.command("screendump", args)
            return path.read_bytes(), fmt
        except QmpError as exc:
            logger.debug("screendump as %s refused: %s", fmt, exc)
        except OSError as exc:
            logger.warning("no screenshot: %s", exc)
            return None, None
    return None, None


def _quit(qmp: QmpClient) -> None:
    try:
        qmp.command("quit")
    except (QmpError, OSError):
        pass  # qemu may close the socket before it answers; _stop makes sure it is gone


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Wait for qemu to end; kill it when it does not within QUIT_WAIT seconds."""
    try:
        proc.wait(QUIT_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _outcome(
    finding: Finding | None, stopped: str | None, seconds: float, timeout: float, accel: str,
    spec: MachineSpec, shot: bytes | None, fmt: str | None, serial: str,
) -> BootOutcome:  # fmt: skip
    tail = serial[-CONSOLE_TAIL:]
    reason: str | None
    detail: str | None
    if finding is not None and finding.outcome == "marker":
        reason, detail = None, None
    elif finding is not None:
        reason, detail = finding.outcome, finding.detail
    elif stopped is not None:
        reason, detail = "guest stopped", f"the guest stopped ({stopped}) before the marker"
    else:
        lines = [line for line in tail.splitlines() if line.strip()]
        last = f"; last console line: {lines[-1].strip()[:200]}" if lines else "; no console output"
        reason, detail = "timeout", f"no marker within {timeout:g} s{last}"
    return BootOutcome(
        reason is None, reason, detail, round(seconds, 2), accel, spec.firmware, shot, fmt, tail
    )

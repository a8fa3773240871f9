"""Reading what a booting guest says: the serial console and the firmware's debug port.

:func:`judge` is pure: the text seen so far in, a :class:`Finding` (or None: keep watching)
out. It knows three outcomes besides the marker, each from text the firmware or the kernel
prints:

- *no bootable disk*: SeaBIOS prints ``No bootable device.`` (on its debug port, 0x402, and on
  the screen) after every disk failed (``Boot failed: not a bootable disk``); OVMF prints
  ``BdsDxe: No bootable option or device was found.``, or, with the EFI shell built in, fails
  each disk option (``BdsDxe: failed to load Boot0001 ...``) and starts the shell. A guest that
  boots only through the shell's ``startup.nsh`` is therefore judged unbootable too.
- *kernel panic*: Linux's ``Kernel panic - not syncing: <why>``;
- and the marker itself (a regular expression; by default a login prompt).

:class:`LogTail` reads a file a process appends to, from where it stopped last time. Bytes
are decoded as UTF-8 with replacement, so a guest's binary noise never stops the watch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Outcome = Literal["marker", "no bootable disk", "kernel panic"]

DEFAULT_MARKER = r"login:"

_ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")
_PANIC = re.compile(r"Kernel panic - not syncing:[^\r\n]*")
_NO_BOOT = (
    re.compile(r"No bootable device\.?"),  # SeaBIOS
    re.compile(r"BdsDxe: No bootable option or device was found\.?"),  # OVMF
    re.compile(r'BdsDxe: starting Boot[0-9A-F]{4} "EFI Internal Shell"'),  # OVMF, all failed
)
_BOOT_FAILED = re.compile(r"(Boot failed: [^\r\n]*|BdsDxe: failed to load [^\r\n]*)")


@dataclass(frozen=True)
class Finding:
    """What the console showed: ``outcome``, and ``detail``, the line that decided it (for a
    failure, the firmware's or kernel's own words, at most :data:`DETAIL_CHARS` long)."""

    outcome: Outcome
    detail: str


DETAIL_CHARS = 300


def compile_marker(expect: str) -> re.Pattern[str]:
    """The marker regex; raises :class:`re.error` for an invalid one."""
    return re.compile(expect)


def judge(serial: str, debug: str, marker: re.Pattern[str]) -> Finding | None:
    """The outcome the text seen so far decides, or None while it decides nothing.

    ``serial`` is the guest's serial console, ``debug`` the firmware's debug port, both from
    the start of the boot. The marker counts on the serial console only, and wins over a panic
    printed after it (a guest may crash once it has booted; the boot test passed). A panic
    wins over the firmware's complaints (the kernel was loaded, so some disk booted)."""
    text = strip_ansi(serial)
    hit = marker.search(text)
    if hit is not None:
        return Finding("marker", _clip(hit.group(0)))
    panic = _PANIC.search(text)
    if panic is not None:
        return Finding("kernel panic", _clip(panic.group(0).strip()))
    firmware = strip_ansi(debug) + "\n" + text
    for pattern in _NO_BOOT:
        if pattern.search(firmware):
            return Finding("no bootable disk", _clip(_why_no_boot(firmware)))
    return None


def _why_no_boot(text: str) -> str:
    """The firmware's own words: every disk's failure line (distinct, in order) and the final
    verdict, e.g. ``Boot failed: not a bootable disk; No bootable device.``"""
    lines = list(dict.fromkeys(m.group(0).strip() for m in _BOOT_FAILED.finditer(text)))
    for pattern in _NO_BOOT[:2]:
        final = pattern.search(text)
        if final is not None:
            lines.append(final.group(0))
    return "; ".join(lines) or "the firmware found no bootable disk"


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (OVMF draws its console with them)."""
    return _ANSI.sub("", text)


def _clip(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 3] + "..."


class LogTail:
    """The growing text of a file another process writes: :meth:`read` returns everything so
    far (at most ``limit`` characters, the newest ones kept). Not thread-safe."""

    def __init__(self, path: Path, limit: int = 1 << 20) -> None:
        self.path = path
        self._limit = limit
        self._offset = 0
        self._text = ""

    def read(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self._text
        self._offset += len(data)
        if data:
            self._text = (self._text + data.decode("utf-8", errors="replace"))[-self._limit :]
        return self._text

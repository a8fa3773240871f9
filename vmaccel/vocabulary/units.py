"""One way to print (and read) bytes, durations and UTC times. Pure; imports nothing of ours
but the error tree.

``format_bytes(1536)``       -> ``1.5 KiB``   binary units, one decimal; below 1 KiB exact
``format_duration(83.4)``    -> ``1 min 23 s``
``format_time(1777629600)``  -> ``2026-05-01T10:00:00Z``  UTC, truncated to the second
``parse_size("64K")``        -> ``65536``     what ``--block-size`` and friends accept

Every human-facing text of vmaccel uses these; ``--json`` documents carry raw numbers (bytes,
UNIX seconds) instead. :func:`format_time` is also the form of a backup's directory name in
the mount (see :mod:`vmaccel.vocabulary.backupref`), so it must never change.
"""

from __future__ import annotations

from datetime import UTC, datetime

from vmaccel.vocabulary.errors import UsageError

_BINARY = ("KiB", "MiB", "GiB", "TiB", "PiB")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (1 KiB = 1024 bytes; the
    largest unit is PiB). Negative counts (a shrinking total) keep their sign."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _BINARY:
        value /= 1024
        if abs(value) < 1024 or unit == _BINARY[-1]:
            break
    return f"{value:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """A wall-clock duration for people: ``0.4 s``, ``12.3 s`` below a minute, then
    ``4 min 05 s``, then ``2 h 03 min`` (whole seconds and minutes, truncated)."""
    if seconds < 60:
        return f"{max(seconds, 0.0):.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def format_time(ts: float) -> str:
    """UNIX seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, fraction dropped): how every time is
    printed, and the name of a backup's directory in the mount."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``64KiB``, ``64kb``, ``1M``, ``2G``, ``1T`` -> bytes (binary units,
    case ignored). Raises :class:`UsageError` for anything else, negative sizes included."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    number = t[: len(t) - len(unit)].strip()
    if not (number.isascii() and number.isdigit()):
        raise UsageError(f"{text!r} is not a size (examples: 65536, 64K, 1M)")
    return int(number) * _SIZE_UNITS[unit]

"""vmaccel.vocabulary.units: the one formatting of bytes, durations and UTC times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vmaccel.vocabulary.backupref import dir_time
from vmaccel.vocabulary.errors import UsageError
from vmaccel.vocabulary.units import format_bytes, format_duration, format_time, parse_size


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1023.7, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 << 20, "10.0 MiB"),
        (3 << 30, "3.0 GiB"),
        (5 << 40, "5.0 TiB"),
        (2048 << 50, "2048.0 PiB"),  # the largest unit
        (-(15 << 20), "-15.0 MiB"),
    ],
)
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.0 s"),
        (-0.01, "0.0 s"),  # clock jitter never prints a negative duration
        (0.44, "0.4 s"),
        (59.94, "59.9 s"),
        (60, "1 min 00 s"),
        (83.4, "1 min 23 s"),
        (3599.9, "59 min 59 s"),
        (3600, "1 h 00 min"),
        (7385, "2 h 03 min"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_time_is_utc_to_the_second_with_z() -> None:
    ts = datetime(2026, 5, 1, 10, 0, 0, tzinfo=UTC).timestamp()
    assert format_time(ts) == "2026-05-01T10:00:00Z"
    assert format_time(ts + 0.999) == "2026-05-01T10:00:00Z"  # truncated, never rounded up
    assert format_time(0) == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize("ts", [0.0, 1_000_000_000.5, 1_777_629_600.999, 4_102_444_800.0])
def test_format_time_is_the_mount_directory_name(ts: float) -> None:
    assert format_time(ts) == dir_time(ts)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("65536", 65536),
        ("64K", 65536),
        ("64k", 65536),
        ("64KiB", 65536),
        ("64kb", 65536),
        (" 1M ", 1 << 20),
        ("1MiB", 1 << 20),
        ("2G", 2 << 30),
        ("1T", 1 << 40),
        ("0", 0),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "K", "64X", "-4K", "1.5M", "4 K B", "²K"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="is not a size"):
        parse_size(text)

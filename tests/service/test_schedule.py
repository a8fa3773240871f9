"""vmaccel.service.schedule: cron times in a policy's time zone, and backup windows."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from vmaccel.service.schedule import Window, last_due, next_due, period, window_open
from vmaccel.vocabulary.errors import UsageError


def ts(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def test_cron_times_follow_the_time_zone_across_dst() -> None:
    # 22:00 in Berlin is 20:00 UTC in summer and 21:00 UTC in winter.
    summer = next_due("0 22 * * *", "Europe/Berlin", ts("2026-07-01 12:00"))
    assert datetime.fromtimestamp(summer, UTC).hour == 20
    winter = next_due("0 22 * * *", "Europe/Berlin", ts("2026-12-01 12:00"))
    assert datetime.fromtimestamp(winter, UTC).hour == 21
    assert last_due("0 22 * * *", "UTC", ts("2026-12-02 21:59:59")) == ts("2026-12-01 22:00")
    assert last_due("0 22 * * *", "UTC", ts("2026-12-02 22:00")) == ts("2026-12-02 22:00")
    assert period("*/5 * * * * *", "UTC", ts("2026-12-02 10:00:02")) == 5.0
    assert period("0 3 * * *", "UTC", ts("2026-12-02 10:00")) == 86400.0


@pytest.mark.parametrize(
    ("window", "at", "open_"),
    [
        ("22:00-06:00", "23:30", True),
        ("22:00-06:00", "05:59:59", True),
        ("22:00-06:00", "06:00", False),
        ("22:00-06:00", "12:00", False),
        ("08:00-17:00", "08:00", True),
        ("08:00-17:00", "17:00", False),
        ("20:00-24:00", "23:59:59", True),
        ("10:00:05-10:00:10", "10:00:07", True),
        ("10:00:05-10:00:10", "10:00:10", False),
    ],
)
def test_windows(window: str, at: str, open_: bool) -> None:
    assert window_open(window, "UTC", ts(f"2026-12-02 {at}")) is open_


def test_window_in_a_time_zone_and_bad_windows() -> None:
    at = ts("2026-12-02 21:30")  # 22:30 in Berlin
    assert window_open("22:00-23:00", "Europe/Berlin", at)
    assert not window_open("22:00-23:00", "UTC", at)
    assert window_open(None, "UTC", at)
    for bad in ("22-06", "24:00-01:00", "10:00-24:30", "9:00-10:00"):
        with pytest.raises(UsageError):
            Window.parse(bad)

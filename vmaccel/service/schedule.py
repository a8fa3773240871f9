"""When a policy runs: its cron schedule in its time zone, and its backup window. Pure.

Schedules are cron expressions (5 fields; 6 with a leading seconds field) evaluated by
cronsim in the policy's IANA time zone, so "0 22 * * *" means 22:00 local time across DST
changes (cronsim follows Debian cron there). A window ``HH:MM-HH:MM`` (local time, may wrap
midnight: "22:00-06:00"; seconds optional, HH:MM:SS) is when VM backups may *start*; None
means always. Times in and out are UNIX seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from vmaccel.vocabulary.errors import UsageError

_TIME = r"([01]\d|2[0-3]|24):([0-5]\d)(?::([0-5]\d))?"
_WINDOW = re.compile(rf"^{_TIME}-{_TIME}$")


def zone(name: str) -> ZoneInfo:
    """The time zone ``name`` (IANA, e.g. "Europe/Berlin"); raises :class:`UsageError`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(f"unknown time zone {name!r} (use an IANA name, e.g. UTC)") from exc


def check_cron(expr: str) -> None:
    """Raise :class:`UsageError` unless ``expr`` is a cron expression cronsim accepts."""
    try:
        CronSim(expr, datetime.now(UTC))
    except (CronSimError, ValueError, IndexError) as exc:
        raise UsageError(f"schedule {expr!r} is no cron expression: {exc}") from exc


def next_due(expr: str, tz: str, after: float) -> float:
    """The first schedule time strictly after ``after``."""
    start = datetime.fromtimestamp(after, zone(tz))
    return next(iter(CronSim(expr, start))).timestamp()


def last_due(expr: str, tz: str, at: float) -> float:
    """The latest schedule time at or before ``at``."""
    start = datetime.fromtimestamp(at, zone(tz)) + timedelta(seconds=1)
    return next(iter(CronSim(expr, start, reverse=True))).timestamp()


def period(expr: str, tz: str, at: float) -> float:
    """Seconds between the schedule time before ``at`` and the one after it (the interval a
    "no success for longer than the schedule allows" check measures in)."""
    return next_due(expr, tz, at) - last_due(expr, tz, at)


@dataclass(frozen=True)
class Window:
    """Backup starts allowed from ``start`` to ``end`` (local time; ``end`` <= ``start``
    wraps midnight; "24:00" is the end of the day)."""

    start: time
    end: time | None  # None: 24:00

    @classmethod
    def parse(cls, text: str) -> Window:
        m = _WINDOW.match(text.strip())
        if not m:
            raise UsageError(f"window {text!r} is not HH:MM-HH:MM (e.g. 22:00-06:00)")
        h1, m1, s1, h2, m2, s2 = (int(g or 0) for g in m.groups())
        if h1 == 24 or (h2 == 24 and (m2 or s2)):
            raise UsageError(f"window {text!r}: 24:00 is the latest time, and only as an end")
        return cls(time(h1, m1, s1), None if h2 == 24 else time(h2, m2, s2))

    def is_open(self, at: float, tz: str) -> bool:
        """Whether a VM backup may start at ``at``."""
        now = datetime.fromtimestamp(at, zone(tz)).time().replace(tzinfo=None)
        if self.end is None:
            return now >= self.start
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end


def window_open(window: str | None, tz: str, at: float) -> bool:
    """Whether ``window`` (None: always open) allows a start at ``at``."""
    return window is None or Window.parse(window).is_open(at, tz)

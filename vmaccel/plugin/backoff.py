"""How long a failing call to vCenter or a transport is retried, and how long to wait between
tries: exponential backoff bounded by a window of wall-clock time.

The two policies below are read when a session or a disk source is opened, so a long network
outage costs at most one window per failing call; a caller that must fail fast (logout,
cleanup after the window ran out) tries once instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Retry for at most ``window`` seconds after the first failure, waiting ``first`` seconds
    before the first retry, ``factor`` times longer before each next one, never more than
    ``cap`` seconds. ``attempts`` bounds the retries whatever the window (0: no bound)."""

    window: float
    first: float = 0.5
    factor: float = 2.0
    cap: float = 15.0
    attempts: int = 0

    def waits(self) -> Iterator[float]:
        """Seconds to sleep before each retry, starting now. Ends when the next try would
        start after the window (or after ``attempts`` retries): then the caller gives up."""
        deadline = time.monotonic() + self.window
        delay, done = self.first, 0
        while (not self.attempts or done < self.attempts) and (
            time.monotonic() + delay <= deadline
        ):
            yield delay
            done += 1
            delay = min(delay * self.factor, self.cap)


# vCenter restarts (service restarts, failovers) take minutes; a backup run waits them out.
VCENTER = Backoff(window=300.0, first=1.0, cap=30.0)
# A dropped datastore/NBD connection is retried a few times, then that disk fails.
TRANSPORT = Backoff(window=60.0, first=0.5, cap=10.0, attempts=5)

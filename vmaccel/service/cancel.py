"""Stopping a running use case cleanly: a stop request every thread of the run checks.

The application requests the stop (a signal handler, a REST call, a job's cancel button);
the run's threads raise :class:`~vmaccel.vocabulary.errors.Interrupted` at their next check
— before a VM starts and at every progress step of a disk — so each unwinds through its own
cleanup (the backup writer records nothing, the snapshot is removed). Checks are cheap: one
``Event.is_set``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from vmaccel.vocabulary.errors import Interrupted

Tracker = Callable[[str, int], Callable[[int], None]]


class Cancel:
    """A stop request shared by the threads of one run. Thread safe."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reason = "stopped"

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return self._reason

    def request(self, reason: str) -> None:
        """Ask the run to stop (idempotent: the first reason is kept). Safe in a signal
        handler: it only sets an attribute and an event."""
        if not self._event.is_set():
            self._reason = reason
            self._event.set()

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop was requested."""
        if self._event.is_set():
            raise Interrupted(f"{self._reason}; nothing of the interrupted work was recorded")

    def guard(self, track: Tracker) -> Tracker:
        """``track`` whose every call and progress step checks first."""

        def guarded(label: str, total: int) -> Callable[[int], None]:
            self.check()
            advance = track(label, total)

            def step(n: int) -> None:
                self.check()
                advance(n)

            return step

        return guarded

"""SIGTERM and SIGHUP take Ctrl-C's path: a service manager stopping vmaccel, or a closed
terminal, cleans up exactly as an operator's Ctrl-C does.

Outside a backup run, the three signals raise :class:`KeyboardInterrupt` in the main thread
(a restore removes its partial file, a lock is released, exit 130). During a run,
:func:`stopping` turns them into a :class:`~vmaccel.service.cancel.Cancel` request instead: the
main thread is only waiting for the run's threads, which stop at their next check and unwind
through their own cleanup (the backup snapshot is removed, nothing partial is recorded).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from vmaccel.service.cancel import Cancel

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> None:
    """Make SIGTERM and SIGHUP interrupt the main thread as SIGINT (Ctrl-C) does (only the
    main thread may set handlers: elsewhere, e.g. the CLI run inside a test, nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


@contextlib.contextmanager
def stopping() -> Iterator[Cancel]:
    """For the duration of a run: the stop signals request a stop of the yielded
    :class:`Cancel` (the first signal; a second one of the same run is ignored)."""
    cancel = Cancel()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def request(signum: int, frame: FrameType | None) -> None:
        cancel.request(f"stopped by {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, request) for sig in STOP_SIGNALS}
    try:
        yield cancel
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

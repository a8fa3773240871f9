"""Notifications of the daemon: queue a notice durably, deliver it in the background.

The daemon calls :meth:`Notifier.run_finished` at the end of every policy run and
:meth:`Notifier.send` for its periodic checks (daily digest, a policy with no recent success,
unprotected VMs). Neither ever raises because of a channel: a notice is first committed to the
outbox (:mod:`vmaccel.daemon.outbox`), then one worker thread delivers it, retrying with
exponential backoff (:class:`RetrySchedule`); every failed try is logged, and a notice whose
last try failed, or that failed for good (see :class:`~vmaccel.daemon.channels.DeliveryFailed`),
is dropped with an error line. Undelivered notices stay in the outbox across restarts.

This module is the public face of the notification package: the daemon imports everything it
needs from here (channels, notices, subscriptions).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vmaccel.daemon.channels import (
    FILE_NAME as CHANNELS_FILE,
)
from vmaccel.daemon.channels import (
    Channel,
    DeliveryFailed,
    SmtpChannel,
    WebhookChannel,
    load_channels,
)
from vmaccel.daemon.notice import (
    Event,
    Notice,
    RunSummary,
    Subscription,
    VmOutcome,
    channels_for,
    digest_notice,
    run_events,
    run_notice,
    stale_notice,
    subscriptions,
    unprotected_notice,
)
from vmaccel.daemon.outbox import Entry, Outbox
from vmaccel.daemon.webhook import post_webhook, redact
from vmaccel.vocabulary.errors import VmaccelError

__all__ = [
    "CHANNELS_FILE",
    "Channel",
    "DeliveryFailed",
    "Event",
    "Notice",
    "Notifier",
    "RetrySchedule",
    "RunSummary",
    "SmtpChannel",
    "Subscription",
    "VmOutcome",
    "WebhookChannel",
    "channels_for",
    "digest_notice",
    "load_channels",
    "open_notifier",
    "run_events",
    "run_notice",
    "stale_notice",
    "subscriptions",
    "unprotected_notice",
]

logger = logging.getLogger(__name__)
IDLE_WAIT = 60.0  # seconds the worker sleeps at most when nothing is due (a safety net only)


@dataclass(frozen=True)
class RetrySchedule:
    """Try a notice at most ``attempts`` times; wait ``first`` seconds after the first failure,
    ``factor`` times longer after each next one, never more than ``cap`` seconds. The default
    spans about an hour (30 s, then 1, 2, 4, 8, 16 and 32 min between the 8 tries)."""

    first: float = 30.0
    factor: float = 2.0
    cap: float = 3600.0
    attempts: int = 8

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try (``failures`` >= 1)."""
        return float(min(self.first * self.factor ** max(failures - 1, 0), self.cap))


class Notifier:
    """The outbox in ``state_dir`` plus its delivery worker. ``channels`` by name (see
    :func:`load_channels`); ``env`` is where SMTP password variables are looked up; ``clock``
    gives Unix seconds. Use as a context manager: entering starts the worker, leaving stops it
    (notices not yet delivered stay queued). Thread-safe."""

    def __init__(
        self,
        state_dir: Path,
        channels: Mapping[str, Channel],
        env: Mapping[str, str],
        retry: RetrySchedule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = Outbox(state_dir)
        self.channels = dict(channels)
        self.retry = retry or RetrySchedule()
        self._env = dict(env)
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Notifier:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the delivery worker (a daemon thread); a no-op when it runs already."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._work, name="vmaccel-notify", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker, waiting up to ``timeout`` seconds for a delivery in flight."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self.outbox.close()

    def send(self, notice: Notice, channels: Iterable[str], once: str | None = None) -> bool:
        """Queue ``notice`` for the named ``channels``; True when it is durable in the outbox.

        Unknown channel names are logged and skipped. ``once`` is a dedupe key: when a notice
        with that key was queued before (in the last ``KEY_DAYS`` days), nothing is queued.
        Never raises for delivery or outbox problems: they are logged and False is returned.
        """
        names = []
        for name in dict.fromkeys(channels):
            if name in self.channels:
                names.append(name)
            else:
                logger.warning("notification channel %r is not configured: skipped", name)
        if not names:
            return False
        try:
            queued = self.outbox.put(notice, names, self._clock(), once)
        except (sqlite3.Error, OSError) as exc:
            logger.error("could not queue notice %r: %s", notice.subject, exc)
            return False
        self._wake.set()
        return queued

    def run_finished(self, run: RunSummary, subs: Sequence[Subscription]) -> bool:
        """Queue the notice of a finished run for every channel subscribed to an event the
        run's state raises (:func:`run_events`); False when none is or queueing failed."""
        names = channels_for(subs, run_events(run.state))
        return self.send(run_notice(run), names) if names else False

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to empty (delivered or dropped)."""
        deadline = time.monotonic() + timeout
        while len(self.outbox):
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                self._deliver_due()
                wait = self._idle_wait()
            except sqlite3.Error as exc:
                logger.error("the notification outbox %s failed: %s", self.outbox.path, exc)
                wait = IDLE_WAIT
            self._wake.wait(wait)
            self._wake.clear()

    def _idle_wait(self) -> float:
        due = self.outbox.next_due()
        if due is None:
            return IDLE_WAIT
        return min(max(due - self._clock(), 0.0), IDLE_WAIT)

    def _deliver_due(self) -> None:
        for entry in self.outbox.due(self._clock()):
            if self._stop.is_set():
                return
            self._attempt(entry)

    def _attempt(self, entry: Entry) -> None:
        channel = self.channels.get(entry.channel)
        if channel is None:
            logger.error(
                "dropped notice %r: channel %r is no longer configured",
                entry.notice.subject,
                entry.channel,
            )
            self.outbox.remove(entry.id)
            return
        try:
            if isinstance(channel, SmtpChannel):
                from vmaccel.daemon.mail import send_mail  # smtplib and email: on first mail

                send_mail(channel, entry.notice, self._env)
            else:
                post_webhook(channel, entry.notice)
        except (OSError, ValueError, VmaccelError) as exc:  # ValueError: a bad address, URL
            self._failed(entry, channel, exc)
            return
        self.outbox.remove(entry.id)
        logger.info("notice %r delivered to %s", entry.notice.subject, channel.name)

    def _failed(self, entry: Entry, channel: Channel, exc: Exception) -> None:
        failures = entry.attempts + 1
        text = str(exc) or type(exc).__name__
        if isinstance(channel, WebhookChannel):
            text = redact(channel, text)
        permanent = isinstance(exc, DeliveryFailed) and exc.permanent
        if permanent or failures >= self.retry.attempts:
            why = "it cannot succeed" if permanent else f"{failures} failed attempt(s)"
            logger.error(
                "dropped notice %r for channel %s after %s: %s",
                entry.notice.subject,
                channel.name,
                why,
                text,
            )
            self.outbox.remove(entry.id)
            return
        delay = self.retry.delay(failures)
        self.outbox.postpone(entry.id, failures, self._clock() + delay, text)
        logger.warning(
            "notice %r to channel %s failed (attempt %d of %d), retry in %.1f s: %s",
            entry.notice.subject,
            channel.name,
            failures,
            self.retry.attempts,
            delay,
            text,
        )


def open_notifier(
    config_dir: Path,
    state_dir: Path,
    env: Mapping[str, str],
    retry: RetrySchedule | None = None,
) -> Notifier:
    """A notifier with the channels of ``config_dir / "notify.toml"`` and its outbox in
    ``state_dir``. Raises :class:`~vmaccel.vocabulary.errors.UsageError` for a malformed
    channel file (so a daemon refuses to start with a broken configuration)."""
    return Notifier(state_dir, load_channels(config_dir / CHANNELS_FILE), env, retry)

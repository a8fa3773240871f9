"""The retry policy (plugin/backoff.py): delays grow, are capped, and stop at the window."""

from __future__ import annotations

import pytest

from vmaccel.plugin.backoff import Backoff


def test_delays_grow_up_to_the_cap_and_stop_at_the_attempts() -> None:
    policy = Backoff(window=1000.0, first=0.5, factor=2.0, cap=3.0, attempts=5)
    assert list(policy.waits()) == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_delays_stop_where_the_next_try_would_start_after_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("vmaccel.plugin.backoff.time.monotonic", lambda: now[0])
    slept = []
    for delay in Backoff(window=10.0, first=1.0, factor=2.0, cap=100.0).waits():
        slept.append(delay)
        now[0] += delay + 0.5  # the sleep, then a try that takes 0.5 s
    # Tries start at 0, 1.5, 4 and 8.5 s; the next would start at 17 s, past the window.
    assert slept == [1.0, 2.0, 4.0]


def test_a_window_shorter_than_the_first_delay_means_one_try() -> None:
    assert list(Backoff(window=0.1, first=0.5).waits()) == []

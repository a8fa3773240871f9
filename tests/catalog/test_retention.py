"""vmaccel.catalog.retention: pure selection, examples and properties."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmaccel.catalog.index import BackupRow
from vmaccel.catalog.retention import PERIODS, RetentionPolicy, select
from vmaccel.vocabulary.errors import UsageError

T0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
HOUR, DAY = 3600.0, 86400.0


def row(i: int, started: float, vm: str = "vm1") -> BackupRow:
    return BackupRow(i, f"uuid-{i}", vm, started, started + 60, "complete")


def ids(rows: tuple[BackupRow, ...] | list[BackupRow]) -> list[int]:
    return [b.id for b in rows]


def kept_ids(backups: list[BackupRow], policy: RetentionPolicy) -> set[int]:
    return {b.id for b, _ in select(backups, policy).keep}


# -- policy validation -------------------------------------------------------------------------


def test_policy_keeping_nothing_is_refused() -> None:
    with pytest.raises(UsageError, match="keeps no backup"):
        RetentionPolicy()
    assert RetentionPolicy(allow_empty=True).keeps_nothing


def test_policy_refuses_negative_counts() -> None:
    with pytest.raises(UsageError, match="keep-daily"):
        RetentionPolicy(last=1, daily=-1)


def test_empty_policy_removes_everything_when_allowed() -> None:
    backups = [row(i, T0 + i) for i in range(3)]
    decision = select(backups, RetentionPolicy(allow_empty=True))
    assert decision.keep == ()
    assert ids(decision.remove) == [2, 1, 0]


# -- examples ------------------------------------------------------------------------------------


def test_keep_last_keeps_the_newest_newest_first() -> None:
    backups = [row(i, T0 + i * HOUR) for i in range(5)]
    decision = select(backups, RetentionPolicy(last=2))
    assert [(b.id, r) for b, r in decision.keep] == [(4, ("last",)), (3, ("last",))]
    assert ids(decision.remove) == [2, 1, 0]


def test_daily_keeps_newest_of_each_day_and_skips_empty_days() -> None:
    # Two backups on day 0, none on day 1, three on day 2, one on day 5.
    times = [T0 + 1 * HOUR, T0 + 5 * HOUR, T0 + 2 * DAY + HOUR, T0 + 2 * DAY + 2 * HOUR]
    times += [T0 + 2 * DAY + 3 * HOUR, T0 + 5 * DAY]
    backups = [row(i, t) for i, t in enumerate(times)]
    decision = select(backups, RetentionPolicy(daily=3))
    assert [(b.id, r) for b, r in decision.keep] == [
        (5, ("daily 2024-01-06",)),
        (4, ("daily 2024-01-03",)),
        (1, ("daily 2024-01-01",)),
    ]
    assert ids(decision.remove) == [3, 2, 0]


def test_rules_are_independent_and_reasons_accumulate() -> None:
    backups = [row(i, T0 + i * DAY) for i in range(10)]  # one a day, Mon 2024-01-01 onwards
    decision = select(backups, RetentionPolicy(last=1, daily=2, weekly=2, monthly=1, yearly=1))
    reasons = {b.id: r for b, r in decision.keep}
    assert reasons[9] == ("last", "daily 2024-01-10", "weekly 2024-W02", "monthly 2024-01",
                          "yearly 2024")  # fmt: skip
    assert reasons[8] == ("daily 2024-01-09",)
    assert reasons[6] == ("weekly 2024-W01",)  # Sunday 2024-01-07 ends ISO week 1
    assert set(reasons) == {9, 8, 6}


def test_weekly_uses_iso_weeks_across_the_year_boundary() -> None:
    # 2020-12-31 (Thu) and 2021-01-03 (Sun) are both in ISO week 2020-W53.
    a = row(1, datetime(2020, 12, 31, 12, tzinfo=UTC).timestamp())
    b = row(2, datetime(2021, 1, 3, 12, tzinfo=UTC).timestamp())
    c = row(3, datetime(2021, 1, 4, 12, tzinfo=UTC).timestamp())
    decision = select([a, b, c], RetentionPolicy(weekly=5))
    assert [(x.id, r) for x, r in decision.keep] == [
        (3, ("weekly 2021-W01",)),
        (2, ("weekly 2020-W53",)),
    ]


def test_each_vm_is_judged_on_its_own() -> None:
    backups = [row(i, T0 + i, "vm1") for i in range(3)] + [row(10, T0 - DAY, "vm2")]
    assert kept_ids(backups, RetentionPolicy(last=1)) == {2, 10}


def test_future_backups_are_kept_and_count_for_nothing() -> None:
    backups = [row(1, T0), row(2, T0 + HOUR), row(3, T0 + 10 * DAY)]
    decision = select(backups, RetentionPolicy(last=1), now=T0 + 2 * HOUR)
    assert [(b.id, r) for b, r in decision.keep] == [(3, ("future",)), (2, ("last",))]


# -- properties ----------------------------------------------------------------------------------

_times = st.lists(
    st.floats(min_value=T0, max_value=T0 + 800 * DAY, allow_nan=False), min_size=0, max_size=40
)
_counts = st.integers(min_value=0, max_value=6)
_policies = st.builds(
    RetentionPolicy,
    last=_counts,
    hourly=_counts,
    daily=_counts,
    weekly=_counts,
    monthly=_counts,
    yearly=_counts,
    allow_empty=st.just(True),
)


def _rows(times: list[float], vms: list[int]) -> list[BackupRow]:
    return [row(i, t, f"vm{vms[i % len(vms)]}") for i, t in enumerate(times)]


@settings(max_examples=150, deadline=None)
@given(_times, st.integers(min_value=0, max_value=10))
def test_keep_last_keeps_exactly_the_n_newest(times: list[float], n: int) -> None:
    backups = _rows(times, [1])
    decision = select(backups, RetentionPolicy(last=n, allow_empty=True))
    newest = sorted(backups, key=lambda b: (b.started, b.id), reverse=True)
    assert ids([b for b, _ in decision.keep]) == ids(newest[:n])
    assert ids(decision.remove) == ids(newest[n:])


@settings(max_examples=150, deadline=None)
@given(_times, st.lists(st.integers(1, 3), min_size=1, max_size=3), _policies)
def test_keep_set_is_the_union_of_the_single_rules(
    times: list[float], vms: list[int], policy: RetentionPolicy
) -> None:
    backups = _rows(times, vms)
    union: set[int] = set()
    for name, count in policy.counts().items():
        single = RetentionPolicy(**{name: count}, allow_empty=True)
        union |= kept_ids(backups, single)
    decision = select(backups, policy)
    assert {b.id for b, _ in decision.keep} == union
    # a partition: every backup exactly once
    assert sorted(ids([b for b, _ in decision.keep]) + ids(decision.remove)) == ids(backups)


@settings(max_examples=150, deadline=None)
@given(_times, st.lists(st.integers(1, 3), min_size=1, max_size=3), _policies, st.randoms())
def test_result_is_independent_of_input_order(
    times: list[float], vms: list[int], policy: RetentionPolicy, rnd: random.Random
) -> None:
    backups = _rows(times, vms)
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert select(backups, policy) == select(shuffled, policy)


@settings(max_examples=150, deadline=None)
@given(_times, st.sampled_from(["hourly", "daily", "weekly", "monthly", "yearly"]), _counts)
def test_period_rule_keeps_newest_of_the_n_newest_periods(
    times: list[float], rule: str, n: int
) -> None:
    backups = _rows(times, [1])
    label = {b.id: PERIODS[rule](datetime.fromtimestamp(b.started, UTC)) for b in backups}
    newest_per_period: dict[str, BackupRow] = {}
    for b in sorted(backups, key=lambda b: (b.started, b.id)):
        newest_per_period[label[b.id]] = b  # later ones overwrite: the newest wins
    periods = sorted(newest_per_period.values(), key=lambda b: (b.started, b.id), reverse=True)
    expected = {b.id for b in periods[:n]}
    policy = RetentionPolicy(**{rule: n}, allow_empty=True)
    assert kept_ids(backups, policy) == expected

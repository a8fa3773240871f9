"""vmaccel.vocabulary.backupref: every form of a backup reference, parsed and selected."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from vmaccel.vocabulary.backupref import BackupRef, dir_names, dir_time
from vmaccel.vocabulary.errors import BackupNotFound, UsageError


@dataclass(frozen=True)
class Row:
    id: int
    started: float


ROWS = [Row(1, 1_000_000_000.5), Row(2, 1_000_000_000.9), Row(3, 1_000_086_400.0)]
UUID = "3f2a6c1e-0b7d-4e55-9a51-2f0c8d9e7b10"


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("42", BackupRef("42", id=42)),
        (" 7 ", BackupRef(" 7 ", id=7)),
        (UUID, BackupRef(UUID, uuid=UUID)),
        (UUID.upper(), BackupRef(UUID.upper(), uuid=UUID)),
        ("web@latest", BackupRef("web@latest", vm="web", back=0)),
        ("web@-2", BackupRef("web@-2", vm="web", back=2)),
        ("web@prod@latest", BackupRef("web@prod@latest", vm="web@prod", back=0)),
        ("web@2026-05-01", BackupRef("web@2026-05-01", vm="web", when="2026-05-01")),
    ],
)
def test_parse(text: str, expect: BackupRef) -> None:
    assert BackupRef.parse(text) == expect


@pytest.mark.parametrize("text", ["", "@latest", "web@", "nope", "12ab", "web"])
def test_parse_refuses_with_the_forms(text: str) -> None:
    with pytest.raises(UsageError, match="VM@latest"):
        BackupRef.parse(text)


@pytest.mark.parametrize(
    ("when", "expect"),
    [
        ("latest", 3),
        ("-1", 2),
        ("-2", 1),
        ("2001-09-09T01:46:40Z", 1),  # a directory name: the first of that second
        ("2001-09-09T01:46:40Z_2", 2),  # the second one's name
        ("2001-09-09T01:46:41Z", 2),  # a time: newest at or before
        ("2001-09-10", 2),  # a date is its midnight (UTC)
        ("2001-09-10T03:46:40+02:00", 3),  # zones are honoured
        ("2030-01-01T00:00", 3),
    ],
)
def test_select(when: str, expect: int) -> None:
    assert BackupRef.parse(f"v@{when}").select(list(reversed(ROWS))).id == expect


def test_select_errors() -> None:
    with pytest.raises(BackupNotFound, match="at or before"):
        BackupRef.parse("v@1999-01-01").select(ROWS)
    with pytest.raises(UsageError, match="ISO 8601"):
        BackupRef.parse("v@yesterday").select(ROWS)
    with pytest.raises(BackupNotFound, match="has 3 backups"):
        BackupRef.parse("v@-3").select(ROWS)
    with pytest.raises(BackupNotFound, match="no complete backups"):
        BackupRef.parse("v@latest").select([])


def test_dir_names_are_stable_as_backups_arrive() -> None:
    names = dir_names(ROWS)
    assert list(names) == ["2001-09-09T01:46:40Z", "2001-09-09T01:46:40Z_2", "2001-09-10T01:46:40Z"]
    assert list(dir_names(ROWS[:2])) == list(names)[:2]
    assert dir_time(ROWS[0].started) == "2001-09-09T01:46:40Z"

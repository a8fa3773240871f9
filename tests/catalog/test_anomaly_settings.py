"""The anomaly verdict's settings and its volume-metadata signal (pure): ``anomaly.toml``
thresholds with per-VM overrides, accepted patterns covering later findings, and the
allocation signals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.catalog.test_anomaly import HISTORY, _stats, _vol
from vmaccel.catalog.anomaly import MIB, DiskSignals, Thresholds, Verdict, judge
from vmaccel.catalog.anomalyconfig import load_thresholds
from vmaccel.catalog.anomalyfindings import Finding
from vmaccel.catalog.anomalypatterns import (
    AcceptedPattern,
    PatternFinding,
    acceptor,
    covers,
    decode_findings,
    encode_findings,
)
from vmaccel.catalog.index.meta import BackupMeta, VolumeAllocation
from vmaccel.vocabulary.errors import UsageError

T = Thresholds()


def test_anomaly_toml_sets_thresholds_with_per_vm_overrides(tmp_path: Path) -> None:
    assert load_thresholds(tmp_path, "vm") == T  # no file: the defaults
    (tmp_path / "anomaly.toml").write_text(
        '[thresholds]\nchanged_unusual = 0.3\nlearning = 3\nransom_notes = ["PAY.txt"]\n'
        '[vm."build-*"]\nchanged_unusual = 0.6\n[vm."build-7"]\nescalate = 3\n'
    )
    common = load_thresholds(tmp_path, "db1")
    assert (common.changed_unusual, common.learning, common.escalate) == (0.3, 3, 2)
    assert common.ransom_notes == frozenset({"pay.txt"})
    build = load_thresholds(tmp_path, "build-7")
    assert (build.changed_unusual, build.learning, build.escalate) == (0.6, 3, 3)
    assert load_thresholds(tmp_path) == common


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[thresholds]\nz_unusal = 4\n", "unknown anomaly threshold 'z_unusal'"),
        ("[thresholds]\nlearning = 2.5\n", "'learning' must be a whole number"),
        ('[thresholds]\nz_unusual = "high"\n', "'z_unusual' must be a number"),
        ("[thresholds]\nmin_files = -1\n", "must not be negative"),
        ("[limits]\nz_unusual = 4\n", "unknown table 'limits'"),
        ('[vm."x"]\nescalate = true\n', "[vm.'x']: anomaly threshold 'escalate'"),
        ("[thresholds\n", "unreadable"),
    ],
)
def test_a_malformed_anomaly_toml_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "anomaly.toml").write_text(text)
    with pytest.raises(UsageError, match=r"anomaly\.toml") as err:
        load_thresholds(tmp_path, "vm")
    assert message in str(err.value)


def test_configured_thresholds_change_an_outcome(tmp_path: Path) -> None:
    disk = DiskSignals("disk0", _stats(45), HISTORY, (_vol(modified=120),))  # 14.5 % changed
    assert judge([disk], 8, T).level == "normal"
    (tmp_path / "anomaly.toml").write_text("[thresholds]\nchanged_unusual = 0.1\n")
    assert judge([disk], 8, load_thresholds(tmp_path, "vm")).level == "unusual"


# An OS upgrade: half the files modified, .rpm files appearing, twice the usual new bytes.
UPGRADE = _vol(modified=500, added=80, new_extension_files=80)
UPGRADE = replace(UPGRADE, new_extensions=("rpm",))


def _judge(stats_mib: float, *vols: object, accept: object = None) -> Verdict:
    disk = DiskSignals("disk0", _stats(stats_mib), HISTORY, vols)  # type: ignore[arg-type]
    return judge([disk], 8, T, accept)  # type: ignore[arg-type]


def _pattern_of(v: Verdict) -> AcceptedPattern:
    found = tuple(PatternFinding(d.disk, f) for d in v.disks for f in d.findings)
    return AcceptedPattern(1, "vm", 3, 1.0, decode_findings(encode_findings(found)))


def test_an_accepted_upgrade_stops_firing_but_ransomware_still_does() -> None:
    first = _judge(45, UPGRADE)
    assert first.level == "suspicious"
    assert {f.kind for f in first.disks[0].findings} == {"changed", "new_extensions"}
    accept = acceptor([_pattern_of(first)], T.pattern_tolerance)

    again = _judge(45, replace(UPGRADE, modified=600), accept=accept)
    assert again.level == "normal"
    assert all(r.startswith("disk0: acknowledged pattern 1: p1: ") for r in again.reasons)
    assert [f.pattern for f in again.disks[0].findings] == [1, 1]

    locked = replace(
        UPGRADE, renamed=300, new_extensions=("locked",), ransom_notes=("/_readme.txt",)
    )
    attack = _judge(45, locked, accept=accept)
    assert attack.level == "suspicious"
    live = [f.kind for f in attack.disks[0].findings if f.pattern is None]
    assert live == ["ransom_notes", "changed", "new_extensions"]  # 83 % changed: beyond 1.5x

    bigger = _judge(45, replace(UPGRADE, modified=900), accept=accept)  # 90 % > 1.5 x 58 %
    assert bigger.level == "suspicious"


def test_covers_needs_the_same_kind_volume_names_and_a_figure_within_tolerance() -> None:
    acked = Finding("new_extensions", "p1", "unusual", "r", 0.1, ("deb", "rpm"))
    assert covers(acked, replace(acked, value=0.15, names=("rpm",)), 1.5)
    assert not covers(acked, replace(acked, value=0.16), 1.5)
    assert not covers(acked, replace(acked, names=("rpm", "locked")), 1.5)
    assert not covers(acked, replace(acked, volume="p2"), 1.5)
    assert not covers(acked, replace(acked, kind="changed"), 1.5)


def test_findings_round_trip_through_backup_meta_and_old_verdicts_have_none() -> None:
    v = _judge(45, UPGRADE)
    meta = BackupMeta(verdict=v)
    assert BackupMeta.from_json(meta.to_json()) == meta
    old = {
        "verdict": {
            "level": "normal",
            "reasons": [],
            "disks": [{"disk": "d", "level": "normal", "reasons": []}],
        }
    }
    parsed = BackupMeta.from_json(old).verdict
    assert parsed is not None and parsed.disks[0].findings == ()


def _alloc(used_mib: float, fstype: str | None = "ext4") -> tuple[VolumeAllocation, ...]:
    return (VolumeAllocation("p1", fstype, "clean", int(used_mib * MIB), None),)


def _alloc_verdict(new_mib: float, before: object, after: object) -> Verdict:
    disk = DiskSignals("disk0", _stats(new_mib), HISTORY, (), after, before)  # type: ignore[arg-type]
    return judge([disk], 8, T)


def test_volume_metadata_signal() -> None:
    # an ordinary day: 45 MiB new, the filesystem grew by 3 MiB
    assert _alloc_verdict(45, _alloc(300), _alloc(303)).level == "normal"
    # 45 MiB rewritten while the used space moved 100 KiB: data rewritten in place
    inplace = _alloc_verdict(45, _alloc(300), _alloc(300.1))
    assert inplace.level == "unusual"
    assert inplace.reasons == (
        "disk0: 45.0 MiB of new data but the filesystems' used space moved 102 KiB "
        "(data rewritten in place)",
    )
    # the filesystem is gone (volume-level encryption, a wipe)
    gone = _alloc_verdict(45, _alloc(300), _alloc(300, None))
    assert gone.reasons == ("disk0: p1: ext4 no longer recognised (now none)",)
    # half the used space released at once
    wholesale = _alloc_verdict(45, _alloc(300), _alloc(100))
    assert wholesale.reasons == ("disk0: p1: used space went from 300.0 MiB to 100.0 MiB",)
    # no allocation summary (free-block skipping off, or an old image): no signal
    assert _alloc_verdict(45, None, _alloc(300)).level == "normal"

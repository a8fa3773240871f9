"""The anomaly verdict (pure): each signal, learning, escalation, and its stored form."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from tests.catalog.conftest import BLOCK, small_config
from vmaccel.catalog import Repository
from vmaccel.catalog.anomaly import (
    MIB,
    DiskSignals,
    Thresholds,
    Verdict,
    VolumeChanges,
    judge,
    robust_z,
)
from vmaccel.catalog.index import BackupRow
from vmaccel.catalog.index.meta import BackupMeta, ImageStats
from vmaccel.catalog.retention import PROTECTED, RetentionPolicy, select

T = Thresholds()
CHUNK = 1 << 20


def _stats(new_mib: float, stored_share: float = 0.5, dedup: int = 100, **kw: int) -> ImageStats:
    new = int(new_mib * MIB)
    chunks = max(1, new // CHUNK)
    return ImageStats(
        bytes_written=new,
        dedup_blocks=dedup,
        new_chunks=chunks,
        new_bytes=new,
        stored_bytes=int(new * stored_share),
        incompressible_blocks=kw.pop("incompressible", chunks // 10),
        **kw,
    )


HISTORY = tuple(_stats(m) for m in (40, 44, 38, 50, 42, 41, 47, 39))


def _vol(files: int = 1000, **kw: int) -> VolumeChanges:
    counts = {"modified": 20, "renamed": 0, "removed": 5, "added": 10, "new_extension_files": 0}
    counts.update(kw)
    return VolumeChanges("p1", files, **counts, new_extensions=(), ransom_notes=())


def _one(stats: ImageStats, *vols: VolumeChanges, earlier: int = 8) -> Verdict:
    return judge([DiskSignals("disk0", stats, HISTORY, vols)], earlier, T)


def test_an_ordinary_day_is_normal_with_no_reasons() -> None:
    v = _one(_stats(45), _vol())
    assert (v.level, v.reasons, v.learning) == ("normal", (), False)


def test_new_bytes_grade_by_robust_z_against_the_history() -> None:
    z, med = robust_z(300 * MIB, [h.new_bytes for h in HISTORY], 4 * MIB)
    assert med == 41.5 * MIB and z > T.z_suspicious
    big = _one(_stats(300))
    assert big.level == "suspicious"
    assert big.reasons[0].startswith("disk0: new bytes 300.0 MiB vs median 41.5 MiB (z ")
    # z ~ 8 with the 25 % MAD floor (10.4 MiB): unusual only
    assert _one(_stats(125)).level == "unusual"


def test_learning_judges_only_the_file_signals() -> None:
    v = _one(_stats(300), earlier=4)
    assert (v.level, v.learning) == ("normal", True)
    locked = _vol(removed=300, new_extension_files=300)
    assert _one(_stats(300), locked, earlier=0).level == "suspicious"


def test_entropy_and_compressibility_together_escalate_to_suspicious() -> None:
    # same volume of change, but every new block random: two unusual signals agree
    chunks = 45
    v = _one(_stats(45, stored_share=0.99, incompressible=chunks))
    assert v.level == "suspicious"
    assert any("100% of new blocks do not compress (median 9%)" in r for r in v.reasons)
    assert any("stored at 99% of their size (median 50%)" in r for r in v.reasons)
    one = _one(_stats(45, incompressible=chunks))
    assert one.level == "unusual"
    assert _one(replace(_stats(45), incompressible_blocks=None)).level == "normal"


def test_dedup_collapse_and_mass_holes() -> None:
    assert _one(_stats(45, dedup=2)).reasons == (
        "disk0: dedup found 4% of written blocks (median 71%)",
    )
    holes = _one(_stats(45, holes_punched=5000))
    assert holes.level == "suspicious" and "5000 blocks punched vs median 0" in holes.reasons[0]


def test_file_signals_share_of_changes_new_extensions_and_ransom_notes() -> None:
    attack = _vol(files=200, modified=0, renamed=0, removed=60, added=61, new_extension_files=60)
    attack = replace(attack, new_extensions=("locked",), ransom_notes=("/HOW_TO_DECRYPT.txt",))
    v = _one(_stats(45), attack)
    assert v.level == "suspicious"
    assert v.reasons == (
        "disk0: p1: ransom-note names appeared (/HOW_TO_DECRYPT.txt)",
        "disk0: p1: 30% of 200 files changed (0 modified, 0 renamed, 60 removed)",
        "disk0: p1: 60 files with new extensions (locked)",
    )
    # a small volume has no share signals: 5 of 10 files is no evidence
    assert _one(_stats(45), _vol(files=10, removed=5)).level == "normal"
    # a ransom note alone is unusual, not suspicious
    note = replace(_vol(), ransom_notes=("/_readme.txt",))
    assert _one(_stats(45), note).level == "unusual"


def test_thresholds_are_configurable() -> None:
    strict = Thresholds(changed_unusual=0.01)
    disk = DiskSignals("disk0", _stats(45), HISTORY, (_vol(),))
    assert judge([disk], 8, strict).level == "unusual"
    assert judge([disk], 8, T).level == "normal"


def test_backup_level_is_the_worst_disk_and_reasons_name_the_disk() -> None:
    calm = DiskSignals("disk0", _stats(45), HISTORY)
    wild = DiskSignals("disk1", _stats(300), HISTORY)
    v = judge([calm, wild], 8, T)
    assert v.level == "suspicious"
    assert [d.level for d in v.disks] == ["normal", "suspicious"]
    assert all(r.startswith("disk1: ") for r in v.reasons)


def test_verdict_round_trips_through_backup_meta_and_bad_values_stay_verbatim() -> None:
    v = _one(_stats(300))
    meta = BackupMeta(kind="standalone", verdict=v, acked="2026-01-01T00:00:00+00:00")
    doc = meta.to_json()
    assert doc["verdict"]["level"] == "suspicious"
    assert BackupMeta.from_json(doc) == meta
    odd = {"verdict": {"level": "weird", "reasons": []}}
    parsed = BackupMeta.from_json(odd)
    assert parsed.verdict is None and parsed.to_json() == odd
    assert ImageStats.from_json({"new_bytes": 1}).incompressible_blocks is None
    assert "incompressible_blocks" not in ImageStats.from_json({"new_bytes": 1}).to_json()
    counted = ImageStats.from_json({"incompressible_blocks": 3}).to_json()
    assert counted["incompressible_blocks"] == 3


def _row(i: int, meta: BackupMeta) -> BackupRow:
    started = 1_700_000_000 + i * 86_400
    return BackupRow(i, f"u{i}", "vm", started, started + 60, "complete", meta)


def test_prune_keeps_suspicious_backups_until_acknowledged() -> None:
    bad = _one(_stats(300))
    rows = [_row(i, BackupMeta()) for i in range(1, 6)]
    rows[1] = _row(2, BackupMeta(verdict=bad))
    rows[2] = _row(3, BackupMeta(verdict=bad, acked="2026-01-01T00:00:00+00:00"))
    decision = select(rows, RetentionPolicy(last=1))
    kept = {b.id: reasons for b, reasons in decision.keep}
    assert kept == {5: ("last",), 2: (PROTECTED,)}
    assert sorted(b.id for b in decision.remove) == [1, 3, 4]


def test_the_image_writer_counts_new_chunks_that_do_not_compress(tmp_path: Path) -> None:
    rng = random.Random(5)
    text = b"".join((b"log line %06d ok\n" % i) for i in range(BLOCK))
    random_part = rng.randbytes(8 * BLOCK)
    data = random_part + text[: 8 * BLOCK] + bytes(4 * BLOCK)  # 8 random, 8 text, 4 zero blocks
    Repository.init(tmp_path / "r", small_config())
    with Repository.open(tmp_path / "r", write=True) as repo, repo.begin_backup("vm") as bw:
        w = bw.image_writer("d", len(data))
        w.write(0, data)
        bw.finish_image("d", w)
        bw.commit()
    with Repository.open(tmp_path / "r") as repo:
        (img,) = repo.images(repo.backups()[0])
    assert (img.stats.new_chunks, img.stats.incompressible_blocks) == (16, 8)

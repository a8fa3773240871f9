"""The index seam: no SQL outside vmaccel/catalog/index/, and typed metadata that reads every
row and manifest written before the types existed (and writes it back unchanged)."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.catalog.conftest import small_config
from vmaccel.catalog import Repository
from vmaccel.catalog.index import (
    BackupMeta,
    BackupRow,
    Baseline,
    CatalogIndex,
    ImageMeta,
    ImageRow,
    ImageStats,
    Index,
    VolumeAllocation,
)

PACKAGE = Path(__file__).resolve().parents[2] / "vmaccel"
INDEX_PACKAGE = PACKAGE / "catalog" / "index"
SQL = re.compile(
    r"\bSELECT\s|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bCREATE\s+TABLE\b"
    r"|BEGIN IMMEDIATE|\.execute(many|script)?\(|\.query\(|import sqlite_utils"
)

# What an image row of a vCenter backup held before the typed records (meta as written then).
OLD_IMAGE_META: dict[str, Any] = {
    "baseline": {
        "instance_uuid": "5003-aa",
        "disk_key": 2000,
        "backing_uuid": "6000c29a-disk",
        "capacity": 1 << 30,
        "change_id": "52 ab cd/17",
    },
    "label": "Hard disk 1",
    "file_name": "[ds1] vm/vm.vmdk",
    "transport": "nbd",
    "source": "vm/vm.vmdk",
    "allocation": [
        {
            "volume": "p1",
            "fstype": "ext4",
            "state": "used",
            "used_bytes": 4096,
            "whole_reason": None,
        }
    ],
    "mode": "incremental",
    "reason": "CBT changes since 52 ab cd/16",
    "adapter_type": "lsilogic",
    "uuid": "6000c29a-disk",  # a key no record names: kept verbatim
}
OLD_BACKUP_META: dict[str, Any] = {
    "instance_uuid": "5003-aa",
    "moref": "vm-42",
    "folder": "dc/vm",
    "power_state": "poweredOn",
    "snapshot": "vmaccel-1",
    "consistency": "crash-consistent",
    "config_xml": "<ConfigInfo/>",
    "api_version": "8.0.2.0",
    "file_catalog": True,
}
OLD_STATS = {"bytes_written": 8192, "new_chunks": 2, "stored_bytes": 100, "dedup_blocks": 0}


# Modules that own a database of their own, never the catalog's, each with its reason.
OWN_DATABASES = {
    # the daemon's notification outbox: a SQLite file in its state directory, kept off the
    # catalog's locks so that a slow mail server never holds up a backup
    PACKAGE / "daemon" / "outbox.py",
}


def test_no_module_outside_the_index_package_holds_sql() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if INDEX_PACKAGE not in path.parents and path not in OWN_DATABASES
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SQL.search(line)
    ]
    assert offenders == []


def test_the_sqlite_index_implements_the_catalog_protocol(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", small_config())
    index: CatalogIndex = Index(tmp_path / "r" / "index.db")  # checked by mypy, too
    try:
        with index.writing():
            bid = index.add_backup("u-1", "vm", 1.0, BackupMeta(moref="vm-1"))
        row = index.backup(bid)
        assert row is not None and row.meta == BackupMeta(moref="vm-1")
        assert row.state == "in_progress"
    finally:
        index.close()


def test_old_image_meta_parses_into_typed_fields() -> None:
    meta = ImageMeta.from_json(OLD_IMAGE_META)
    assert meta.baseline == Baseline("5003-aa", 2000, "6000c29a-disk", 1 << 30, "52 ab cd/17")
    assert (meta.label, meta.key, meta.unit) == ("Hard disk 1", None, None)
    assert (meta.mode, meta.transport, meta.adapter_type) == ("incremental", "nbd", "lsilogic")
    assert meta.allocation == (VolumeAllocation("p1", "ext4", "used", 4096, None),)
    assert meta.skip_free is None and meta.skips_free  # before the flag: told by allocation
    assert meta.extra == {"uuid": "6000c29a-disk"}
    assert meta.to_json() == OLD_IMAGE_META


def test_disk_names_stored_as_plain_keys_are_typed() -> None:
    meta = ImageMeta.from_json({"label": "Hard disk 2", "key": 2001, "unit": "scsi0:1"})
    assert (meta.label, meta.key, meta.unit) == ("Hard disk 2", 2001, "scsi0:1")
    assert ImageMeta(label="Hard disk 2", key=2001, unit="scsi0:1").to_json() == {
        "label": "Hard disk 2",
        "key": 2001,
        "unit": "scsi0:1",
    }


@pytest.mark.parametrize(
    "doc",
    [
        {"skip_free": "yes", "key": True, "mode": 3},  # wrong types
        {"baseline": {"instance_uuid": "i"}, "allocation": [{"volume": "p1"}]},  # incomplete
        {"label": None, "anything": {"nested": [1, 2]}},  # null, unknown
    ],
)
def test_damaged_or_unknown_values_are_kept_verbatim_and_untyped(doc: dict[str, Any]) -> None:
    meta = ImageMeta.from_json(doc)
    assert meta == ImageMeta(extra=doc)
    assert meta.to_json() == doc
    assert BackupMeta.from_json(doc).to_json() == doc


def test_old_backup_meta_and_stats() -> None:
    meta = BackupMeta.from_json(OLD_BACKUP_META)
    assert meta.instance_uuid == "5003-aa" and meta.consistency == "crash-consistent"
    assert meta.catalogued and meta.extra == {}
    assert meta.to_json() == OLD_BACKUP_META
    assert not BackupMeta.from_json({"kind": "standalone", "source": "/dev/sdb"}).catalogued
    stats = ImageStats.from_json(OLD_STATS)
    assert (stats.new_chunks, stats.stored_bytes, stats.zero_blocks) == (2, 100, 0)


def test_old_manifest_rows_parse_and_write_back_the_same(tmp_path: Path) -> None:
    backup = {
        "id": 3,
        "uuid": "u-3",
        "vm": "vm",
        "started": 10.0,
        "finished": 11.5,
        "state": "complete",
        "meta": OLD_BACKUP_META,
    }
    image = {
        "id": 7,
        "backup_id": 3,
        "disk": "disk-2000",
        "size": 1 << 30,
        "block_size": 65536,
        "fanout": 256,
        "depth": 2,
        "root": "ab" * 32,
        "parent_id": 5,
        "change_id": "52 ab cd/17",
        "meta": OLD_IMAGE_META,
        "stats": {**OLD_STATS, "zero_blocks": 0, "new_bytes": 0, "holes_punched": 0},
    }
    b, i = BackupRow.from_json(backup), ImageRow.from_json(image)
    assert b.meta.moref == "vm-42" and i.root == bytes.fromhex("ab" * 32)
    assert i.meta.baseline is not None and i.meta.baseline.disk_key == 2000
    assert b.to_json() == backup and i.to_json() == image


def test_an_old_format_index_row_reads_typed(tmp_path: Path) -> None:
    path = tmp_path / "r"
    Repository.init(path, small_config())
    with closing(sqlite3.connect(path / "index.db")) as db, db:  # rows as an old version wrote
        db.execute(
            "INSERT INTO backup (id, uuid, vm, started, finished, state, meta)"
            " VALUES (1, 'u-1', 'vm', 1.0, 2.0, 'complete', ?)",
            (json.dumps(OLD_BACKUP_META),),
        )
        db.execute(
            "INSERT INTO image (id, backup_id, disk, size, block_size, fanout, depth, root,"
            " parent_id, change_id, meta, stats) VALUES (1, 1, 'disk-2000', 0, 65536, 256, 1,"
            " NULL, NULL, NULL, ?, ?)",
            (json.dumps(OLD_IMAGE_META), json.dumps(OLD_STATS)),
        )
    with Repository.open(path, write=True) as repo:
        (backup,) = repo.backups()
        assert backup.meta == BackupMeta.from_json(OLD_BACKUP_META)
        (image,) = repo.images(backup)
        assert image.meta.baseline is not None and image.meta.baseline.change_id == "52 ab cd/17"
        assert image.stats.stored_bytes == 100
        repo.set_backup_meta(backup, BackupMeta.from_json({**OLD_BACKUP_META, "moref": "vm-9"}))
    with closing(sqlite3.connect(path / "index.db")) as db:
        (stored,) = db.execute("SELECT meta FROM backup WHERE id = 1").fetchone()
    assert json.loads(stored) == {**OLD_BACKUP_META, "moref": "vm-9"}

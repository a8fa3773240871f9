"""The catalog's schema: sqlite-utils migrations, each applied once in its own transaction and
recorded in the database (``_sqlite_migrations``). Add a migration; never edit an applied one."""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("vmaccel.catalog")


@migrations(name="0001_initial")
def _m0001(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE pack (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
            created REAL NOT NULL, state TEXT NOT NULL DEFAULT 'live');
        CREATE TABLE chunk (
            id BLOB PRIMARY KEY, pack_id INTEGER NOT NULL REFERENCES pack(id),
            "offset" INTEGER NOT NULL, stored_len INTEGER NOT NULL, raw_len INTEGER NOT NULL,
            kind INTEGER NOT NULL, flags INTEGER NOT NULL, crc INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX chunk_pack ON chunk(pack_id);
        CREATE TABLE backup (
            id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL UNIQUE, vm TEXT NOT NULL,
            started REAL NOT NULL, finished REAL, state TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}');
        CREATE INDEX backup_vm ON backup(vm, started);
        CREATE TABLE image (
            id INTEGER PRIMARY KEY AUTOINCREMENT, backup_id INTEGER NOT NULL REFERENCES backup(id),
            disk TEXT NOT NULL, size INTEGER NOT NULL, block_size INTEGER NOT NULL,
            fanout INTEGER NOT NULL, depth INTEGER NOT NULL, root BLOB,
            parent_id INTEGER, change_id TEXT, meta TEXT NOT NULL DEFAULT '{}',
            stats TEXT NOT NULL DEFAULT '{}', UNIQUE (backup_id, disk));
        """
    )


@migrations(name="0002_file_catalog")
def _m0002(db: sqlite_utils.Database) -> None:
    # The file catalog (catalog/index/files.py): a listing is one filesystem's file tree,
    # stored once per distinct content; images point at the listings of their volumes.
    db.executescript(
        """
        CREATE TABLE listing (
            id INTEGER PRIMARY KEY AUTOINCREMENT, digest BLOB NOT NULL UNIQUE,
            entries INTEGER NOT NULL);
        CREATE TABLE file_entry (
            listing_id INTEGER NOT NULL REFERENCES listing(id), path TEXT NOT NULL,
            kind TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER);
        CREATE INDEX file_entry_listing ON file_entry(listing_id);
        CREATE INDEX file_entry_path ON file_entry(path);
        CREATE TABLE image_volume (
            image_id INTEGER NOT NULL REFERENCES image(id), volume TEXT NOT NULL,
            fstype TEXT, listing_id INTEGER NOT NULL REFERENCES listing(id),
            PRIMARY KEY (image_id, volume));
        CREATE INDEX image_volume_listing ON image_volume(listing_id);
        """
    )


@migrations(name="0003_file_identity")
def _m0003(db: sqlite_utils.Database) -> None:
    # File identity for `files diff` (renames): the inode (ext4/XFS inode number, NTFS MFT
    # record number; NULL on FAT and in listings stored before) and the permission bits.
    # Listings are streamed in path order per listing: (listing_id, path) replaces the
    # listing-only index.
    db.executescript(
        """
        ALTER TABLE file_entry ADD COLUMN inode INTEGER;
        ALTER TABLE file_entry ADD COLUMN mode INTEGER;
        CREATE INDEX file_entry_listing_path ON file_entry(listing_id, path);
        DROP INDEX file_entry_listing;
        """
    )


@migrations(name="0004_leases")
def _m0004(db: sqlite_utils.Database) -> None:
    # Writer leases (catalog/lease.py): one row per running backup writer; the AUTOINCREMENT
    # id is its place in a global order (ids are never reused). chunk.condemned: gc's mark
    # that a chunk was unreferenced, holding the highest lease id issued when it was hidden
    # from dedup lookups (NULL: not condemned). See docs/format.md for the deletion rule.
    db.executescript(
        """
        CREATE TABLE lease (
            id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
            started REAL NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL,
            what TEXT NOT NULL);
        ALTER TABLE chunk ADD COLUMN condemned INTEGER;
        CREATE INDEX chunk_condemned ON chunk(condemned) WHERE condemned IS NOT NULL;
        """
    )

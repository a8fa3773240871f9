"""The catalog's schema: sqlite-utils migrations, each applied once in its own transaction and
recorded in the database (``_sqlite_migrations``). Add a migration; never edit an applied one.
The newest one's name is also ``connection.NEWEST_MIGRATION``: opening an index checks for it
alone before loading this module."""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

from vmaccel.catalog.index.connection import MIGRATION_SET

migrations = Migrations(MIGRATION_SET)


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


@migrations(name="0005_policies_jobs")
def _m0005(db: sqlite_utils.Database) -> None:
    # Policies (catalog/index/policies.py): the current spec of each policy as JSON, and every
    # change in policy_change (the history). Jobs (catalog/index/jobs.py): a job is one policy
    # run (later: restores, maintenance); it fans out into vm_job rows, each into disk_task
    # rows per attempt; job_log holds a bounded log per job. Rows carry their state and owner
    # ("host:pid") so that workers claim them with a conditional UPDATE (PostgreSQL: row locks).
    db.executescript(
        """
        CREATE TABLE policy (
            name TEXT PRIMARY KEY, spec TEXT NOT NULL, version INTEGER NOT NULL,
            created REAL NOT NULL, updated REAL NOT NULL);
        CREATE TABLE policy_change (
            id INTEGER PRIMARY KEY AUTOINCREMENT, policy TEXT NOT NULL,
            version INTEGER NOT NULL, at REAL NOT NULL, action TEXT NOT NULL, spec TEXT,
            who TEXT NOT NULL);
        CREATE INDEX policy_change_policy ON policy_change(policy, id);
        CREATE TABLE job (
            id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, policy TEXT,
            trigger TEXT NOT NULL, due REAL, state TEXT NOT NULL, queued REAL NOT NULL,
            started REAL, finished REAL, owner TEXT, cancel INTEGER NOT NULL DEFAULT 0,
            summary TEXT NOT NULL DEFAULT '{}');
        CREATE INDEX job_policy ON job(policy, id);
        CREATE INDEX job_state ON job(state);
        CREATE TABLE vm_job (
            id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL REFERENCES job(id),
            vm TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
            not_before REAL, started REAL, finished REAL, owner TEXT, backup_id INTEGER,
            bytes_read INTEGER NOT NULL DEFAULT 0, bytes_stored INTEGER NOT NULL DEFAULT 0,
            warnings TEXT NOT NULL DEFAULT '[]', error TEXT, UNIQUE (job_id, vm));
        CREATE INDEX vm_job_state ON vm_job(state);
        CREATE TABLE disk_task (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            vm_job_id INTEGER NOT NULL REFERENCES vm_job(id), attempt INTEGER NOT NULL,
            disk TEXT NOT NULL, state TEXT NOT NULL, mode TEXT, reason TEXT,
            size INTEGER NOT NULL DEFAULT 0, bytes_read INTEGER NOT NULL DEFAULT 0,
            bytes_stored INTEGER NOT NULL DEFAULT 0, duration REAL NOT NULL DEFAULT 0,
            error TEXT, warnings TEXT NOT NULL DEFAULT '[]');
        CREATE INDEX disk_task_vm_job ON disk_task(vm_job_id);
        CREATE TABLE job_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL REFERENCES job(id),
            vm_job_id INTEGER, at REAL NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL);
        CREATE INDEX job_log_job ON job_log(job_id, id);
        """
    )


@migrations(name="0006_api_tokens")
def _m0006(db: sqlite_utils.Database) -> None:
    # API tokens of the REST API (catalog/index/tokens.py): only a SHA-256 digest of each
    # token is kept, with a short hint to tell tokens apart; revoked rows stay (ids not reused).
    db.executescript(
        """
        CREATE TABLE api_token (
            id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, scope TEXT NOT NULL,
            digest BLOB NOT NULL UNIQUE, hint TEXT NOT NULL, created REAL NOT NULL,
            revoked REAL);
        """
    )


@migrations(name="0007_backup_list")
def _m0007(db: sqlite_utils.Database) -> None:
    # Paged lists of backups and per-VM spans (index.backup_page, vm_backup_spans: the REST
    # API and the console) count and order complete backups by start time: a covering index
    # answers that without scanning the rows (each carries kilobytes of metadata).
    db.executescript("CREATE INDEX backup_state_started ON backup(state, started, id, vm);")


@migrations(name="0008_console_users")
def _m0008(db: sqlite_utils.Database) -> None:
    # Console users (catalog/index/users.py): a scrypt hash per user, never a password;
    # sessions by the SHA-256 of their cookie value, with the CSRF token and expiry.
    db.executescript(
        """
        CREATE TABLE console_user (
            id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL, pwhash TEXT NOT NULL, created REAL NOT NULL,
            changed REAL NOT NULL);
        CREATE TABLE console_session (
            digest BLOB PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES console_user(id),
            csrf TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL);
        CREATE INDEX console_session_user ON console_session(user_id);
        """
    )


@migrations(name="0009_anomaly_patterns")
def _m0009(db: sqlite_utils.Database) -> None:
    # Accepted anomaly patterns (catalog/index/patterns.py): findings a VM's admin accepted
    # with `backups ack --pattern`, so that they stop raising later verdicts.
    db.executescript(
        """
        CREATE TABLE anomaly_pattern (
            id INTEGER PRIMARY KEY AUTOINCREMENT, vm TEXT NOT NULL,
            backup_id INTEGER NOT NULL, created REAL NOT NULL, findings TEXT NOT NULL);
        CREATE INDEX anomaly_pattern_vm ON anomaly_pattern(vm, id);
        """
    )


@migrations(name="0010_attempt_reports")
def _m0010(db: sqlite_utils.Database) -> None:
    # What a backup proxy reports of one attempt of a VM job it ran for a policy run
    # (catalog/index/reports.py): the run's owner reads it and records the attempt.
    db.executescript(
        """
        CREATE TABLE attempt_report (
            vm_job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, worker TEXT NOT NULL,
            reported REAL NOT NULL, report TEXT NOT NULL, PRIMARY KEY (vm_job_id, attempt));
        """
    )


@migrations(name="0011_proxies")
def _m0011(db: sqlite_utils.Database) -> None:
    # Backup proxies (catalog/index/proxies.py): one row per start of a `vmaccel worker`,
    # refreshed with its heartbeats, so that `vmaccel proxies` shows which exist and what
    # they serve (procrastinate's worker table holds only an id and a heartbeat).
    db.executescript(
        """
        CREATE TABLE proxy (
            id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, host TEXT NOT NULL,
            pid INTEGER NOT NULL, datastores TEXT NOT NULL DEFAULT '[]',
            max_jobs INTEGER NOT NULL, worker_id INTEGER, stalled_after REAL NOT NULL,
            started REAL NOT NULL, last_seen REAL NOT NULL, stopped REAL);
        CREATE INDEX proxy_name ON proxy(name, id);
        """
    )

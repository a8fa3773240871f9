"""The documented shape of every ``--json`` output (docs/json.md), as checks.

A schema is a dict of required keys; each value is a type (or a tuple of types, ``NONE`` for
null), a nested schema, ``[item]`` for a list of items, or :class:`MapOf` for an object keyed by
names. Extra keys are allowed (the documents may grow), but never a storage internal: the block
map's shape is no part of any output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NONE = type(None)
NUM = (int, float)
STR_OR_NONE = (str, NONE)

# Keys that would expose how the repository stores data, not what it holds.
INTERNAL = frozenset({"fanout", "depth", "root", "map_root", "map_fanout"})


@dataclass(frozen=True)
class MapOf:
    """An object whose keys are names (VMs, vCenters), each value of ``item``'s shape."""

    item: Any


def check(doc: Any, schema: Any, where: str = "$") -> None:
    """Assert ``doc`` has ``schema``'s shape; the message names the path that differs."""
    if isinstance(schema, dict):
        assert isinstance(doc, dict), f"{where}: not an object: {doc!r}"
        missing = sorted(set(schema) - set(doc))
        assert not missing, f"{where}: missing keys {missing}"
        for key, sub in schema.items():
            check(doc[key], sub, f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(doc, list), f"{where}: not a list: {doc!r}"
        for i, item in enumerate(doc):
            check(item, schema[0], f"{where}[{i}]")
    elif isinstance(schema, MapOf):
        assert isinstance(doc, dict), f"{where}: not an object: {doc!r}"
        for key, item in doc.items():
            assert isinstance(key, str)
            check(item, schema.item, f"{where}.{key}")
    else:
        types = schema if isinstance(schema, tuple) else (schema,)
        ok = isinstance(doc, types) and not (isinstance(doc, bool) and bool not in types)
        assert ok, f"{where}: {doc!r} is not {types}"


def check_entries(doc: Any, where: str = "$") -> None:
    """Every non-null ``old``, ``new`` and ``entry`` (the listing entries of ``files diff``
    and ``files history``) has the entry shape."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("old", "new", "entry") and isinstance(value, dict):
                check(value, _ENTRY, f"{where}.{key}")
            else:
                check_entries(value, f"{where}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            check_entries(item, f"{where}[{i}]")


def internals(doc: Any, where: str = "$") -> list[str]:
    """Paths of storage-internal keys anywhere in ``doc``."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in INTERNAL:
                found.append(f"{where}.{key}")
            found += internals(value, f"{where}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            found += internals(item, f"{where}[{i}]")
    return found


def validate(name: str, doc: Any) -> None:
    """``doc`` has the documented shape of output ``name`` and no storage internals."""
    check(doc, SCHEMAS[name])
    check_entries(doc)
    for i, b in enumerate(doc if isinstance(doc, list) else [doc]):
        if isinstance(b, dict) and isinstance(b.get("verdict"), dict):
            check(b["verdict"], _VERDICT, f"$[{i}].verdict")
        if isinstance(b, dict) and isinstance(b.get("boot"), dict):
            check(b["boot"], _BOOT, f"$[{i}].boot")
    assert not internals(doc), f"{name}: storage internals in the output: {internals(doc)}"


_DISK = {
    "disk": str,
    "mode": str,
    "reason": str,
    "size": int,
    "bytes_read": int,
    "new_bytes": int,
    "stored_bytes": int,
    "hole_bytes": int,
    "duration": NUM,
    "read_fraction": NUM,
    "change_id": STR_OR_NONE,
    "error": STR_OR_NONE,
    "ok": bool,
    "warnings": [str],
}
_VM = {
    "vm": str,
    "backup_id": (int, NONE),
    "ok": bool,
    "exit_code": int,
    "consistency": str,
    "duration": NUM,
    "catalog_seconds": NUM,
    "error": STR_OR_NONE,
    "warnings": [str],
    "disks": [_DISK],
}
_IMAGE = {
    "id": int,
    "backup_id": int,
    "disk": str,
    "size": int,
    "block_size": int,
    "change_id": STR_OR_NONE,
    "parent_id": (int, NONE),
    "meta": {"mode": str, "reason": str, "transport": str},
    "stats": {"new_bytes": int, "stored_bytes": int, "new_chunks": int},
}
_BACKUP = {
    "id": int,
    "uuid": str,
    "vm": str,
    "state": str,
    "started": NUM,
    "finished": (int, float, NONE),
    "time": str,
    "meta": dict,
    "images": [_IMAGE],
    "verdict": (dict, NONE),
    "acked": STR_OR_NONE,
    "boot": (dict, NONE),
}
_BOOT = {
    "passed": bool,
    "reason": STR_OR_NONE,
    "detail": STR_OR_NONE,
    "seconds": NUM,
    "time": str,
    "expect": str,
    "firmware": str,
    "accel": str,
    "screenshot": STR_OR_NONE,
    "screenshot_format": STR_OR_NONE,
}
_VERDICT = {
    "level": str,
    "reasons": [str],
    "learning": bool,
    "disks": [{"disk": str, "level": str, "reasons": [str]}],
}
_PRUNED = {"id": int, "uuid": str, "vm": str, "state": str, "started": NUM}
_ENTRY = {
    "kind": str,
    "size": int,
    "mtime_ns": (int, NONE),
    "inode": (int, NONE),
    "mode": (int, NONE),
}
_ENTRY_OR_NONE = (dict, NONE)  # an entry (checked by check_entries) or null
_POINT = {"backup_id": int, "vm": str, "started": NUM}
_CHANGE = {
    "change": str,
    "path": str,
    "old_path": STR_OR_NONE,
    "fields": [str],
    "old": _ENTRY_OR_NONE,
    "new": _ENTRY_OR_NONE,
}
_COUNTS = {k: int for k in ("added", "removed", "modified", "type_changed", "renamed")}
_EVENT = {
    "backup_id": int,
    "vm": str,
    "started": NUM,
    "disk": str,
    "volume": str,
    "change": str,
    "fields": [str],
    "entry": _ENTRY_OR_NONE,
}

SCHEMAS: dict[str, Any] = {
    "backup": {"ok": bool, "exit_code": int, "vms": [_VM]},
    "backups list": [_BACKUP],
    "backups show": _BACKUP,
    "verify --boot": {
        **_BOOT,
        "backup_id": int,
        "uuid": str,
        "vm": str,
        "disks": [str],
        "console": str,
    },
    "backups ack": _BACKUP,
    "repo stats": {
        "backups": int,
        "vms": int,
        "images": int,
        "logical_bytes": int,
        "mapped_bytes": int,
        "unique_bytes": int,
        "stored_bytes": int,
        "pack_bytes": int,
        "packs": int,
        "data_chunks": int,
        "dedup_ratio": NUM,
        "compression_ratio": NUM,
    },
    "repo rebuild-index": {
        "ok": bool,
        "complete": bool,
        "backups": int,
        "images": int,
        "chunks": int,
        "packs": int,
        "lost": list,
        "problems": list,
        "renumbered": list,
        "scanned_packs": list,
        "moved_aside": STR_OR_NONE,
    },
    "verify": {
        "ok": bool,
        "full": bool,
        "backups": int,
        "images": int,
        "chunks": int,
        "chunks_read": int,
        "bytes_read": int,
        "packs": int,
        "damaged": list,
        "affected": list,
        "problems": [str],
        "info": [str],
    },
    "prune": {
        "dry_run": bool,
        "kept_count": int,
        "removed_count": int,
        "policy": {k: int for k in ("last", "hourly", "daily", "weekly", "monthly", "yearly")},
        "finished": list,
        "vms": MapOf({"kept": [{**_PRUNED, "reasons": [str]}], "removed": [_PRUNED]}),
    },
    "gc": {
        "dry_run": bool,
        "grace_seconds": NUM,
        "live_chunks": int,
        "chunks_deleted": int,
        "orphans_deleted": int,
        "temporary_deleted": int,
        "packs_deleted": int,
        "packs_repacked": int,
        "packs_written": int,
        "packs_not_repacked": int,
        "packs_young": int,
        "packs_pending": list,
        "bytes_freed": int,
        "bytes_written": int,
        "bytes_pending": int,
        "space_needed": int,
        "backups_removed": list,
        "leases_live": int,
        "leases_cleared": int,
        "chunks_condemned": int,
        "chunks_waiting": int,
        "packs_held": int,
        "backups_left": list,
        "strays_left": int,
    },
    "files find": [
        {
            "backup_id": int,
            "vm": str,
            "time": NUM,
            "disk": str,
            "volume": str,
            "path": str,
            "kind": str,
            "size": int,
            "mtime_ns": (int, NONE),
        }
    ],
    "files diff": {
        "a": _POINT,
        "b": _POINT,
        "path": STR_OR_NONE,
        "volumes": [
            {
                "disk": str,
                "volume": str,
                "fstype": STR_OR_NONE,
                "status": str,
                "reason": STR_OR_NONE,
                "counts": _COUNTS,
                "changes": [_CHANGE],
            }
        ],
    },
    "files history": {"path": str, "vm": STR_OR_NONE, "events": [_EVENT]},
    "restore disk": {
        "source": str,
        "target": str,
        "device": bool,
        "size": int,
        "data_bytes": int,
        "hole_bytes": int,
        "seconds": NUM,
        "bytes_per_second": NUM,
    },
    "restore vm": {
        "backup_id": int,
        "source_vm": str,
        "action": str,
        "vm": str,
        "moref": str,
        "replaced": STR_OR_NONE,
        "powered_on": bool,
        "cbt_reset": bool,
        "seconds": NUM,
        "bytes_written": int,
        "notes": [str],
        "disks": [
            {
                "disk": str,
                "target": str,
                "transport": str,
                "mode": str,
                "size": int,
                "bytes_written": int,
                "bytes_zeroed": int,
                "seconds": NUM,
                "reason": str,
            }
        ],
    },
    "restore file": {
        "target": str,
        "files": int,
        "dirs": int,
        "symlinks": int,
        "hardlink_copies": int,
        "bytes": int,
        "seconds": NUM,
        "failed": list,
        "skipped": list,
    },
    "proxies": {
        "catalog": str,
        "now": NUM,
        "proxies": [
            {
                "name": str,
                "state": str,
                "host": str,
                "pid": int,
                "datastores": [str],
                "max_jobs": int,
                "worker_id": (int, NONE),
                "started": NUM,
                "last_seen": NUM,
                "stopped": (int, float, NONE),
                "stalled_after": NUM,
                "silent": NUM,
                "vms": [
                    {
                        "vm": str,
                        "policy": str,
                        "job": int,
                        "vm_job": int,
                        "attempt": int,
                        "datastore": str,
                    }
                ],
            }
        ],
    },
    "vcenter list": MapOf(
        {
            "host": str,
            "user": str,
            "thumbprint": STR_OR_NONE,
            "ca_file": STR_OR_NONE,
            "password_env": STR_OR_NONE,
        }
    ),
}

"""The anomaly thresholds of a repository: ``anomaly.toml`` in the repository's directory.

Histories are per repository, so are their thresholds. The file is optional (no file: the
defaults of :class:`~vmaccel.catalog.anomaly.Thresholds`) and read when a backup's verdict is
computed, so an edit applies from the next backup on. Every field of ``Thresholds`` can be
set, under ``[thresholds]`` for every VM and under ``[vm."PATTERN"]`` for the VMs whose name
matches the shell-style ``PATTERN`` (``fnmatch``, case-sensitive); every matching table
applies, in file order, over the repository-wide values::

    [thresholds]
    changed_unusual = 0.25
    ransom_notes = ["how_to_decrypt.txt", "read_me_now.txt"]   # replaces the built-in list

    [vm."build-*"]          # build servers churn every day
    changed_unusual = 0.6
    changed_suspicious = 0.9

Integer fields take integers, share and score fields numbers, ``ransom_notes`` a list of
base names (compared in lower case). An unknown table or key, a value of the wrong type, or
a negative figure is a :class:`~vmaccel.vocabulary.errors.UsageError` naming the file and
the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from vmaccel.catalog.anomaly import Thresholds
from vmaccel.vocabulary.errors import UsageError

FILENAME = "anomaly.toml"
_FIELDS = {f.name: f for f in fields(Thresholds)}
_INTS = frozenset(n for n, f in _FIELDS.items() if f.type in ("int", int))


def thresholds_file(repo_path: Path) -> Path:
    """Where the thresholds of the repository at ``repo_path`` are configured."""
    return repo_path / FILENAME


def load_thresholds(repo_path: Path, vm: str | None = None) -> Thresholds:
    """The effective thresholds of ``vm`` (of every VM when None: ``[thresholds]`` only) in
    the repository at ``repo_path``. Raises UsageError for a malformed file (module doc)."""
    path = thresholds_file(repo_path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Thresholds()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: unreadable: {exc}") from None
    return parse_thresholds(doc, vm, str(path))


def parse_thresholds(doc: Mapping[str, Any], vm: str | None, where: str) -> Thresholds:
    """The thresholds of ``vm`` a parsed ``anomaly.toml`` sets (see the module doc); every
    VM table is checked, whether it matches ``vm`` or not."""
    unknown = sorted(set(doc) - {"thresholds", "vm"})
    if unknown:
        raise UsageError(f'{where}: unknown table {unknown[0]!r} (use [thresholds], [vm."NAME"])')
    t = _apply(Thresholds(), doc.get("thresholds", {}), f"{where}: [thresholds]")
    per_vm = _table(doc.get("vm", {}), f"{where}: [vm]")
    for pattern, table in per_vm.items():
        where_vm = f"{where}: [vm.{pattern!r}]"
        changed = _apply(t, table, where_vm)  # checked even when it does not match
        if vm is not None and fnmatchcase(vm, pattern):
            t = changed
    return t


def overrides(doc: Mapping[str, Any], vm: str) -> list[str]:
    """The ``[vm."PATTERN"]`` tables of a parsed file that match ``vm``, in file order."""
    per_vm = doc.get("vm", {})
    return [p for p in per_vm if fnmatchcase(vm, p)] if isinstance(per_vm, Mapping) else []


def _table(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: must be a table")
    return raw


def _apply(t: Thresholds, raw: Any, where: str) -> Thresholds:
    changes: dict[str, Any] = {}
    for key, value in _table(raw, where).items():
        if key not in _FIELDS:
            known = ", ".join(_FIELDS)
            raise UsageError(f"{where}: unknown anomaly threshold {key!r} (known: {known})")
        try:
            changes[key] = _value(key, value)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
    return replace(t, **changes)


def _value(key: str, value: Any) -> Any:
    if key == "ransom_notes":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"anomaly threshold {key!r} must be a list of file names")
        return frozenset(v.lower() for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"anomaly threshold {key!r} must be a number, not {value!r}")
    if key in _INTS and not isinstance(value, int):
        raise UsageError(f"anomaly threshold {key!r} must be a whole number, not {value!r}")
    if value < 0:
        raise UsageError(f"anomaly threshold {key!r} must not be negative ({value!r})")
    return int(value) if key in _INTS else float(value)

"""Object Lock for an S3 repository: the retention rule, the local book of lock dates, and
the deletes a lock defers.

The rule (docs/format.md, "Object Lock", states it for users): with a lock period ``L`` every
object is written with a retain-until date of at least ``now + L``, and a backup that commits
at ``T`` first makes every object it can reference locked until at least ``T + L``. The objects
it can reference are a subset of the *live* packs of the index plus ``config`` and ``key``
(every chunk a complete backup names lies in a live pack: repack moves live chunk rows before
it retires a pack), so that superset is what a commit protects (:func:`protected_keys`). This
costs one index query per commit and no map walk, so a commit stays proportional to the
changed data; the price is that a dead pack stays locked until ``L`` after gc retires it
(rather than after the last backup that used it was pruned).

So that a commit does not send one request per pack, a lock that must be extended is
extended to ``T + L + slack`` (:attr:`LockPolicy.slack`, a quarter of ``L``): each pack is
touched at most once per slack period. Lock dates only ever grow, so setting
``now + L + slack`` never shortens one set earlier by this rule (a server refuses that
anyway: AccessDenied, after which the real date is read and recorded).

The :class:`RetentionBook` is a local JSON file (``locks.json`` beside the index) of the lock
date each object is known to have; losing it only costs requests (every live pack is then
extended once by the next commit). Deferred deletes are objects ``.pending/<key>`` in the
bucket (see :mod:`vmaccel.catalog.s3store`), so that rebuild-index never resurrects a pruned
backup whose manifest is still locked.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmaccel.catalog.durable import create_private_file
from vmaccel.vocabulary.errors import UsageError

if TYPE_CHECKING:
    from vmaccel.catalog.index import CatalogIndex

MODES = ("compliance", "governance")
DAY = 86400


@dataclass(frozen=True)
class LockPolicy:
    """``mode`` ``compliance`` (nobody shortens or removes a lock) or ``governance`` (a user
    with ``s3:BypassGovernanceRetention`` can); ``seconds`` the lock period ``L`` (> 0)."""

    mode: str
    seconds: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(
                f"unknown Object Lock mode {self.mode!r}; use compliance or governance"
            )
        if self.seconds <= 0:
            raise UsageError("an Object Lock period must be at least one second")

    @property
    def s3_mode(self) -> str:
        return self.mode.upper()

    @property
    def slack(self) -> int:
        """Seconds a lock is extended beyond what the rule needs (fewer extensions)."""
        return self.seconds // 4

    def until(self, now: float) -> float:
        """The retain-until date (UNIX seconds) of what is written or extended at ``now``."""
        return now + self.seconds + self.slack


def protected_keys(index: CatalogIndex, encrypted: bool) -> list[str]:
    """The object keys a backup committing now may reference (see the module docstring)."""
    from vmaccel.catalog.packstore import pack_key

    keys = ["config", *(["key"] if encrypted else [])]
    return keys + [pack_key(p.name) for p in index.packs(state="live")]


class RetentionBook:
    """Known retain-until dates (UNIX seconds) by object key, kept in a local JSON file.

    Every date in it is a true lower bound of the object's lock (it comes from a write, an
    extension or a HEAD, and locks never shrink), so any subset of it is safe: processes that
    share the file merge on :meth:`save` (the larger date wins), and a lost update or a lost
    file only costs requests. Thread safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._known: dict[str, float] = self._read()
        self._gone: set[str] = set()

    def _read(self) -> dict[str, float]:
        try:
            raw = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}  # lost or torn: only costs requests
        return {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def short_of(self, keys: Iterable[str], need: float) -> list[str]:
        """The keys whose known date is before ``need`` (or unknown), in the given order."""
        with self._lock:
            return [k for k in dict.fromkeys(keys) if self._known.get(k, 0.0) < need]

    def record(self, key: str, until: float) -> None:
        """Remember that ``key`` is locked until ``until`` (never lowers a known date)."""
        with self._lock:
            self._known[key] = max(until, self._known.get(key, 0.0))
            self._gone.discard(key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._known.pop(key, None)
            self._gone.add(key)

    def save(self) -> None:
        """Merge with the file (larger dates win, forgotten keys go) and replace it."""
        with self._lock:
            merged = self._read()
            for key, until in self._known.items():
                merged[key] = max(until, merged.get(key, 0.0))
            for key in self._gone:
                merged.pop(key, None)
            self._known, self._gone = merged, set()
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.unlink(missing_ok=True)
            os.close(create_private_file(tmp))
            tmp.write_text(json.dumps(merged, sort_keys=True))
            tmp.replace(self.path)

"""The report of one gc (catalog.gc): what it deleted, repacked, left and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vmaccel.vocabulary.units import format_bytes


@dataclass(frozen=True)
class GcReport:
    """The outcome of one gc. Byte counts are file bytes on the pack store.

    ``bytes_freed`` is file bytes actually deleted (packs, orphans, temporary files);
    ``bytes_written`` the bytes of the new packs repacking wrote, so the repository shrank
    by their difference. ``packs_pending`` (``bytes_pending``) are packs left ``deleting``
    because a reader held the repository; the next gc deletes them. ``space_needed`` is how
    many more free bytes gc needed to repack the ``packs_not_repacked`` it could not (0 when
    it did everything). With ``dry_run`` nothing changed and the counts say what would.

    Beside backup writers (see catalog.lease and catalog.condemn): ``leases_live`` writers
    were running when the mark began (``leases_cleared`` stale leases of killed writers were
    removed); while any ran, the unfinished backups (``backups_left``) and the orphan and
    temporary files (``strays_left``) were left alone, as they may be theirs.
    ``chunks_condemned`` dead chunks were newly hidden from dedup; ``chunks_waiting``
    condemned chunks were kept, with the ``packs_held`` packs holding them, because a writer
    that may use them was running or started too recently; the next gc deletes them.

    Object Lock (catalog.s3lock): ``locked_waiting`` deleted objects (packs, manifests) are
    still locked and recorded as deferred deletes; ``locked_deleted`` deferred deletes whose
    lock had expired were done by this run.
    """

    dry_run: bool
    grace_seconds: float
    backups_removed: tuple[str, ...] = ()
    live_chunks: int = 0
    chunks_deleted: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    packs_young: int = 0
    orphans_deleted: int = 0
    temporary_deleted: int = 0
    packs_pending: tuple[str, ...] = ()
    bytes_freed: int = 0
    bytes_written: int = 0
    bytes_pending: int = 0
    packs_not_repacked: int = 0
    space_needed: int = 0
    leases_live: int = 0
    leases_cleared: int = 0
    chunks_condemned: int = 0
    chunks_waiting: int = 0
    packs_held: int = 0
    backups_left: tuple[str, ...] = ()
    strays_left: int = 0
    locked_deleted: int = 0
    locked_waiting: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backups_removed"] = list(self.backups_removed)
        d["packs_pending"] = list(self.packs_pending)
        d["backups_left"] = list(self.backups_left)
        return d

    def summary(self) -> list[str]:
        would = "would be " if self.dry_run else ""
        lines = [
            f"{len(self.backups_removed)} unfinished backup(s) {would}removed",
            f"{self.live_chunks} live chunk(s); {self.chunks_deleted} dead chunk(s) {would}deleted",
            f"{self.packs_deleted} pack(s) {would}deleted, {self.packs_repacked} {would}repacked "
            f"into {self.packs_written} new pack(s)",
            f"{self.orphans_deleted} orphan pack file(s) and {self.temporary_deleted} temporary "
            f"file(s) {would}deleted",
            f"{format_bytes(self.bytes_freed)} {would}freed" + self._net(),
        ]
        lines.extend(self._beside_writers())
        if self.locked_deleted or self.locked_waiting:
            lines.append(
                f"Object Lock: {self.locked_deleted} deferred delete(s) done; "
                f"{self.locked_waiting} object(s) wait for their lock to expire"
            )
        if self.packs_young:
            lines.append(
                f"{self.packs_young} pack(s) younger than the grace period "
                f"({self.grace_seconds:g} s) left alone"
            )
        if self.packs_pending:
            lines.append(
                f"{len(self.packs_pending)} pack(s) ({format_bytes(self.bytes_pending)}) not "
                "deleted yet because a reader (or a backup) holds the repository; run gc again "
                "when no mount, restore, verify or backup is running"
            )
        if self.packs_not_repacked and not self.space_needed:
            lines.append(
                f"{self.packs_not_repacked} pack(s) {would}not repacked while a reader (or a "
                "backup) holds the repository (new packs could not replace the old ones yet)"
            )
        if self.space_needed:
            lines.append(
                f"{self.packs_not_repacked} pack(s) {would}not repacked: gc needs "
                f"{self.space_needed} more free bytes ({format_bytes(self.space_needed)}) on the "
                "repository's filesystem; free that much and run gc again"
            )
        return lines

    def _beside_writers(self) -> list[str]:
        would = "would be " if self.dry_run else ""
        lines = []
        if self.leases_cleared:
            lines.append(f"{self.leases_cleared} stale lease(s) of killed writers {would}cleared")
        if self.leases_live:
            lines.append(
                f"{self.leases_live} backup writer(s) running: {len(self.backups_left)} "
                f"unfinished backup(s) and {self.strays_left} orphan or temporary file(s) left "
                "alone (they may be theirs); the next gc removes what is garbage then"
            )
        if self.chunks_waiting:
            lines.append(
                f"{self.chunks_waiting} condemned chunk(s) in {self.packs_held} pack(s) kept: "
                "a backup writer that may use them was running or started too recently; "
                "the next gc deletes them"
            )
        return lines

    def _net(self) -> str:
        if not self.bytes_written:
            return ""
        net, take = self.bytes_freed - self.bytes_written, "would take" if self.dry_run else "take"
        change = (
            f"{format_bytes(net)} less"
            if net >= 0
            else f"{format_bytes(-net)} more until the held-back packs go"
        )
        return (
            f", {format_bytes(self.bytes_written)} written by repacking: the packs {take} {change}"
        )

"""Where a filesystem keeps a file's metadata, for catalogues that follow changed blocks.

A file catalog can be brought up to date from the blocks a backup changed instead of walking
the tree again, on filesystems that can say which bytes each piece of metadata lives in:

- ``record(inode)``: the byte range of the inode's own record (kind, size, times, mode and,
  for a directory, where its entries are). Its stat is a function of these bytes.
- ``entries(inode)``: for a directory, every byte range its entry list is read from (the entry
  blocks and the blocks that map them), or None when that cannot be said cheaply (the caller
  then lists the directory again).
- ``layout()``: a fingerprint of where records are. Two states of a volume with equal layouts
  keep every inode's record at the same bytes, so unchanged bytes mean an unchanged record.

Offsets are bytes within the volume. Inode numbers are those of ``FileStat.inode``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from vmaccel.guestfs.errors import GuestFsError

Range = tuple[int, int]  # (offset, length) in volume bytes


@runtime_checkable
class Placement(Protocol):
    """What a filesystem says about where its metadata lives (see the module docstring).
    Every method may raise ``GuestFsError`` on damaged metadata."""

    def layout(self) -> bytes: ...

    def record(self, inode: int) -> Range: ...

    def entries(self, inode: int) -> list[Range] | None: ...


class GuardedPlacement:
    """A backend's :class:`Placement` whose parser failures (``errors``) come out as
    ``GuestFsError`` made by ``damaged`` (the tree's converter). Called once per entry of a
    followed listing: the conversion is a plain ``try``, not a context manager."""

    def __init__(
        self,
        inner: Placement,
        errors: tuple[type[BaseException], ...],
        damaged: Callable[[str, BaseException], GuestFsError],
    ) -> None:
        self._inner, self._errors, self._damaged = inner, errors, damaged

    def layout(self) -> bytes:
        try:
            return self._inner.layout()
        except self._errors as exc:
            raise self._damaged("/", exc) from exc

    def record(self, inode: int) -> Range:
        try:
            return self._inner.record(inode)
        except self._errors as exc:
            raise self._damaged(f"inode {inode}", exc) from exc

    def entries(self, inode: int) -> list[Range] | None:
        try:
            return self._inner.entries(inode)
        except self._errors as exc:
            raise self._damaged(f"inode {inode}", exc) from exc

"""Naming a disk of a VM or of a backup: one model, one matcher. Pure; imports only errors.

A disk is stored under one **name** per backup: ``disk-KEY`` for a vCenter disk (KEY is the
device key, e.g. ``disk-2000``), ``disk0`` for a ``--source`` backup. A user may name it by
any of these forms, and every command that takes a disk accepts all of them:

``disk-2000``     the stored name (exact)
``2000``          the device key (vCenter disks)
``Hard disk 1``   the label vCenter shows (case and runs of spaces ignored)
``scsi0:1``       the controller unit: controller kind, bus number, ``:``, unit number
                  (``ide``, ``sata``, ``nvme`` likewise; case ignored)

A text that names no disk raises :class:`NotFound` listing the choices; one that names two
different disks raises :class:`UsageError` naming both. Images store the key, label and unit
in their metadata under :data:`META_KEY`, :data:`META_LABEL` and :data:`META_UNIT` (plain
JSON values; :func:`stored_identity` builds the identity from them); images written before
those keys existed still match by name and by key (from the name ``disk-KEY`` or the stored
invariant-3 baseline).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vmaccel.vocabulary.errors import NotFound, UsageError

META_LABEL = "label"
"""Image metadata key: the disk's label as vCenter shows it ("Hard disk 1"), a string."""
META_KEY = "key"
"""Image metadata key: the disk's device key (2000), an integer."""
META_UNIT = "unit"
"""Image metadata key: the disk's controller unit ("scsi0:1"), a string."""

STANDALONE = "disk0"
"""The name of the one disk of a backup taken from a file or NBD source (no vCenter)."""

FORMS = "a name (disk-2000), a key (2000), a label (Hard disk 1) or a unit (scsi0:1)"
_KEY_NAME = re.compile(r"^disk-(\d{1,9})$")
_UNIT = re.compile(r"^([a-z]+)(\d{1,3}):(\d{1,3})$")


def name_for_key(key: int) -> str:
    """The stored name of the vCenter disk with device key ``key`` (``disk-KEY``): stable
    across backups of the VM and safe as one path component."""
    return f"disk-{key}"


def unit_name(controller: str, bus: int, unit: int) -> str:
    """``scsi``, 0, 1 -> ``scsi0:1`` (the form vSphere's .vmx and UI use)."""
    return f"{controller.lower()}{bus}:{unit}"


@dataclass(frozen=True)
class DiskIdentity:
    """Everything a disk can be called. ``name`` is unique within one VM or backup; ``key``
    (vCenter device key), ``label`` and ``unit`` are None where unknown (``--source``
    backups, images written before they were stored)."""

    name: str
    key: int | None = None
    label: str | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a disk needs a name")

    def matches(self, text: str) -> bool:
        """Whether ``text`` names this disk in any form (see the module docstring)."""
        raw = text.strip()
        if raw == self.name:
            return True
        if self.key is not None:
            by_name = _KEY_NAME.match(raw)
            if (by_name and int(by_name.group(1)) == self.key) or raw == str(self.key):
                return True
        if self.label is not None and _fold(raw) == _fold(self.label):
            return True
        return self.unit is not None and raw.lower() == self.unit.lower()

    def describe(self) -> str:
        """``disk-2000 (Hard disk 1, scsi0:0, key 2000)``: the name, then what else names it."""
        extra = [self.label, self.unit, None if self.key is None else f"key {self.key}"]
        known = [e for e in extra if e]
        return f"{self.name} ({', '.join(known)})" if known else self.name


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def stored_identity(
    name: str, key: int | None = None, label: str | None = None, unit: str | None = None
) -> DiskIdentity:
    """The identity of a stored image from the plain values its metadata holds (any may be
    missing in images written before they were stored). Tolerant: an empty label or a unit
    not of the form ``scsi0:1`` is None; without a key, a name ``disk-KEY`` supplies it."""
    if key is None:
        by_name = _KEY_NAME.match(name)
        key = int(by_name.group(1)) if by_name else None
    return DiskIdentity(
        name,
        key,
        label or None,
        unit if unit is not None and _UNIT.match(unit.lower()) else None,
    )


def match_disk(
    text: str,
    disks: Iterable[DiskIdentity],
    where: str = "",
    missing: type[NotFound] = NotFound,
) -> DiskIdentity:
    """The one disk of ``disks`` that ``text`` names, in any form.

    ``where`` ("backup 3 of web") opens the error messages. Raises ``missing`` (a
    :class:`NotFound`) listing the choices when nothing matches, :class:`UsageError` naming
    the candidates when ``text`` names two different disks.
    """
    choices = list(disks)
    found = [d for d in choices if d.matches(text)]
    if len(found) == 1:
        return found[0]
    prefix = f"{where} has " if where else "there is "
    if not found:
        raise missing(f"{prefix}no disk {text.strip()!r}; {_choices(choices)}")
    names = ", ".join(d.describe() for d in found)
    raise UsageError(
        f"{text.strip()!r} names {len(found)} disks{' of ' + where if where else ''}: {names}; "
        "name one by its stored name"
    )


def _choices(disks: Sequence[DiskIdentity]) -> str:
    if not disks:
        return "it has no disks"
    return "choose " + "; ".join(d.describe() for d in disks) + f" — {FORMS}"

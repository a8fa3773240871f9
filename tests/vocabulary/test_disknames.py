"""vmaccel.vocabulary.disknames: every form of a disk name, matched; every error, worded."""

from __future__ import annotations

import pytest

from vmaccel.vocabulary.disknames import (
    STANDALONE,
    DiskIdentity,
    match_disk,
    name_for_key,
    stored_identity,
    unit_name,
)
from vmaccel.vocabulary.errors import ImageNotFound, NotFound, UsageError

BOOT = DiskIdentity("disk-2000", 2000, "Hard disk 1", "scsi0:0")
DATA = DiskIdentity("disk-2001", 2001, "Hard disk 2", "scsi0:1")
SATA = DiskIdentity("disk-16000", 16000, "Hard disk 3", "sata0:0")
OLD = stored_identity("disk-3000")  # an image from before label/key/unit were stored
SOURCE = stored_identity(STANDALONE)  # a --source backup
VM = [BOOT, DATA, SATA]


@pytest.mark.parametrize(
    ("text", "disks", "expect"),
    [
        ("disk-2000", VM, BOOT),  # stored name
        ("2001", VM, DATA),  # key
        (" 2001 ", VM, DATA),
        ("disk-16000", VM, SATA),
        ("Hard disk 2", VM, DATA),  # label
        ("hard DISK 2", VM, DATA),  # label, case ignored
        ("Hard  disk   1", VM, BOOT),  # label, runs of spaces ignored
        ("scsi0:1", VM, DATA),  # unit
        ("SCSI0:0", VM, BOOT),  # unit, case ignored
        ("sata0:0", VM, SATA),
        ("disk-3000", [OLD, BOOT], OLD),  # old image: by name
        ("3000", [OLD, BOOT], OLD),  # old image: key from its name
        (STANDALONE, [SOURCE], SOURCE),
    ],
)
def test_every_form_matches(text: str, disks: list[DiskIdentity], expect: DiskIdentity) -> None:
    assert match_disk(text, disks) == expect


@pytest.mark.parametrize("text", ["disk-2000", "2000", "Hard disk 1", "scsi0:0"])
def test_each_form_matches_only_its_disk(text: str) -> None:
    assert [d for d in VM if d.matches(text)] == [BOOT]


@pytest.mark.parametrize("text", ["disk-2002", "2002", "Hard disk", "scsi0:2", "scsi1:0", ""])
def test_no_match_lists_the_choices(text: str) -> None:
    with pytest.raises(NotFound) as err:
        match_disk(text, VM, "backup 3 of web")
    message = str(err.value)
    assert message.startswith(f"backup 3 of web has no disk {text!r}; choose ")
    assert "disk-2000 (Hard disk 1, scsi0:0, key 2000)" in message
    assert "disk-2001 (Hard disk 2, scsi0:1, key 2001)" in message
    assert "disk-16000 (Hard disk 3, sata0:0, key 16000)" in message
    assert err.value.exit_code == 7


def test_no_match_without_context_or_disks() -> None:
    with pytest.raises(NotFound, match=r"^there is no disk 'x'; it has no disks$"):
        match_disk("x", [])
    with pytest.raises(NotFound, match=r"choose disk0 — a name"):
        match_disk("disk1", [SOURCE])


def test_the_not_found_class_is_the_callers() -> None:
    with pytest.raises(ImageNotFound):
        match_disk("nodisk", VM, missing=ImageNotFound)


def test_a_text_naming_two_disks_is_a_usage_error() -> None:
    # One disk's label is the other's stored name: the text is ambiguous, never a guess.
    odd = DiskIdentity("disk-2001", 2001, "disk-2000")
    with pytest.raises(UsageError) as err:
        match_disk("disk-2000", [BOOT, odd], "web")
    assert str(err.value) == (
        "'disk-2000' names 2 disks of web: disk-2000 (Hard disk 1, scsi0:0, key 2000), "
        "disk-2001 (disk-2000, key 2001); name one by its stored name"
    )
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("disk-2000",), DiskIdentity("disk-2000", 2000)),
        (("disk-2000", 2000, "Hard disk 1", "scsi0:0"), BOOT),
        (("disk-9", 2000), DiskIdentity("disk-9", 2000)),  # a stored key wins over the name
        (("disk0",), DiskIdentity("disk0")),
        (("disk-2000", None, "", "scsi:x"), DiskIdentity("disk-2000", 2000)),  # junk dropped
    ],
)
def test_stored_identity(args: tuple[object, ...], expect: DiskIdentity) -> None:
    assert stored_identity(*args) == expect  # type: ignore[arg-type]


def test_names_and_units() -> None:
    assert name_for_key(2000) == "disk-2000"
    assert unit_name("SCSI", 1, 15) == "scsi1:15"
    assert DiskIdentity("disk0").describe() == "disk0"
    with pytest.raises(ValueError, match="name"):
        DiskIdentity("")

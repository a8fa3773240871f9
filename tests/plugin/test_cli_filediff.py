"""``files diff`` and ``files history`` through the real CLI, on a real guest disk (GPT: FAT32,
ext4, NTFS, LVM ext4) backed up before and after a guest day plus one rename per volume: the
diff is exactly what the guest did (its own record), from the catalog alone."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.guestimages.guestday import GuestDay
from testbed.guestimages.model import GuestImage, GuestVolume
from testbed.guestimages.mounts import mounted
from tests.plugin.jsonshape import validate
from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.cli.app import main

Change = tuple[str, str, str | None]  # (change, path, old path)


def _backup(repo: Path, image: Path) -> None:
    argv = ["backup", "--repo", str(repo), "--source", f"file:{image}", "--name", "g", "--json"]
    assert main(argv) == 0


def _rename_one(image: GuestImage, vol: GuestVolume, touched: set[str]) -> tuple[str, str]:
    """Move one file the day left alone to the volume root; returns (old, new) paths."""
    old = next(
        p
        for p, fe in sorted(vol.files.items())
        if fe.kind == "file" and p not in touched and "/" in p and fe.data is None
    )
    new = f"moved-{os.path.basename(old)}"
    with mounted(image.path, vol, read_only=False) as root:
        os.rename(root / old, root / new)
    return "/" + old, "/" + new


def _expected(day: GuestDay, vol: GuestVolume, renamed: tuple[str, str]) -> Counter[Change]:
    action = {"rewrite": "modified", "append": "modified", "delete": "removed", "create": "added"}
    out: Counter[Change] = Counter(
        (action[c.action], "/" + c.path, None) for c in day.changes[vol.name]
    )
    old, new = renamed
    if vol.fstype == "vfat":  # no inodes: a rename is a removal plus an addition
        out.update([("removed", old, None), ("added", new, None)])
    else:
        out[("renamed", new, old)] += 1
    return out


def _actual(volume: dict[str, object]) -> Counter[Change]:
    """The volume's changes of anything but directories (whose mtimes the day moved)."""
    out: Counter[Change] = Counter()
    for c in volume["changes"]:  # type: ignore[attr-defined]
        entry = c["new"] or c["old"]
        if entry["kind"] != "dir":
            out[(c["change"], c["path"], c["old_path"])] += 1
    return out


def _json(capsys: pytest.CaptureFixture[str], argv: list[str], shape: str) -> dict[str, object]:
    capsys.readouterr()
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    validate(shape, doc)
    return doc  # type: ignore[no-any-return]


def test_diff_equals_what_the_guest_did_and_history_shows_both_versions(
    tmp_path: Path,
    private_image: Callable[[str], GuestImage],
    guest_day: Callable[..., GuestDay],
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = private_image("gpt")
    repo = tmp_path / "repo"
    Repository.init(repo, RepositoryConfig())
    _backup(repo, image.path)
    day = guest_day(image, fraction=0.05, seed=7)
    expected = []
    for vol in day.image.volumes:
        renamed = _rename_one(day.image, vol, {c.path for c in day.changes[vol.name]})
        expected.append(_expected(day, vol, renamed))
    _backup(repo, day.image.path)

    doc = _json(capsys, ["files", "diff", "--repo", str(repo), "1", "--json"], "files diff")
    assert (doc["a"]["backup_id"], doc["b"]["backup_id"]) == (1, 2)  # type: ignore[index]
    volumes = doc["volumes"]
    assert all(v["status"] == "compared" for v in volumes)  # type: ignore[attr-defined]
    actual = [_actual(v) for v in volumes]  # type: ignore[attr-defined]
    key = lambda c: sorted(c.items(), key=repr)  # noqa: E731 - a sort key
    assert sorted(actual, key=key) == sorted(expected, key=key)
    renames = sum(n for c in actual for (kind, _, _), n in c.items() if kind == "renamed")
    assert len(volumes) == 4 and renames == 3  # ext4, NTFS, LVM ext4; FAT has no inodes

    capsys.readouterr()
    assert main(["files", "diff", "--repo", str(repo), "1", "2"]) == 0
    text = capsys.readouterr().out
    assert "backup 1 (" in text and "3 renamed" not in text and "1 renamed" in text
    assert sum(line.startswith("  R ") and " -> /moved-" in line for line in text.splitlines()) == 3

    vol = day.image.volumes[1]
    change = next(c for c in day.changes[vol.name] if c.action == "append")
    path = "/" + change.path
    hist = _json(
        capsys,
        ["files", "history", "--repo", str(repo), path, "--vm", "g", "--json"],
        "files history",
    )
    # The same tree is on several volumes of the test disk: the appended one must show the
    # change in restore point 2 and, older, the file appearing in restore point 1.
    events = [
        (e["backup_id"], e["change"], e["entry"]["size"] if e["entry"] else None)
        for e in hist["events"]  # type: ignore[attr-defined]
    ]
    before = image.volume(vol.name).files[change.path].size
    after = day.image.volume(vol.name).files[change.path].size
    assert events.index((2, "changed", after)) < events.index((1, "appeared", before))
    assert [e[0] for e in events] == sorted((e[0] for e in events), reverse=True)
    capsys.readouterr()
    assert main(["files", "history", "--repo", str(repo), path]) == 0
    assert "changed (size, mtime)" in capsys.readouterr().out

    limited = _json(
        capsys,
        [
            "files",
            "diff",
            "--repo",
            str(repo),
            "@latest",
            "--vm",
            "g",
            "1",
            "--path",
            "/nowhere",
            "--json",
        ],
        "files diff",
    )
    assert limited["path"] == "/nowhere"
    assert all(not v["changes"] for v in limited["volumes"])  # type: ignore[attr-defined]

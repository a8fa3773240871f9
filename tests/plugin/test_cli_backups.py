"""`backups list|show`, `prune`, `gc`, `verify`, `repo stats|rebuild-index`, `files find` and
`restore disk|file` through the CLI: exact exit codes, and every --json output in its
documented shape (docs/json.md) with no storage internals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.plugin.clirepo import backup, ext4_image
from tests.plugin.conftest import Cli
from tests.plugin.jsonshape import validate


def test_backups_list_and_show(cli: Cli, new_repo: Callable[[str], Path], tmp_path: Path) -> None:
    repo = new_repo("repo")
    first, second = ext4_image(tmp_path, "a1", 1), ext4_image(tmp_path, "a2", 2)
    validate("backup", backup(cli, repo, first, "a"))
    backup(cli, repo, second, "a")
    backup(cli, repo, first, "b")

    listed = cli("backups", "list", "--repo", repo, "--json")
    assert listed.rc == 0, listed.err
    validate("backups list", listed.json)
    assert [(b["id"], b["vm"]) for b in listed.json] == [(1, "a"), (2, "a"), (3, "b")]
    only_a = cli("backups", "list", "--repo", repo, "--vm", "a", "--json").json
    assert [b["id"] for b in only_a] == [1, 2]
    human = cli("backups", "list", "--repo", repo)
    assert human.rc == 0 and all(f" {vm} " in human.out for vm in ("a", "b")), human.out

    shown = cli("backups", "show", "2", "--repo", repo, "--json")
    assert shown.rc == 0, shown.err
    validate("backups show", shown.json)
    assert shown.json["id"] == 2 and shown.json == only_a[1]
    (image,) = shown.json["images"]
    assert image["disk"] == "disk0" and image["parent_id"] == 1
    assert image["meta"]["mode"] == "incremental"
    text = cli("backups", "show", "1", "--repo", repo)
    assert text.rc == 0 and text.out.startswith("backup 1 of a at "), text.out
    assert "disk0: 8.0 MiB, full" in text.out

    missing = cli("backups", "show", "99", "--repo", repo, "--json")
    assert (missing.rc, missing.out) == (7, "")
    assert missing.err.strip() == f"vmaccel: error: no complete backup '99' in {repo}"
    # `backups show` takes every backup reference form, like restore and mount
    for ref in ("a@latest", "a@-0", f"{shown.json['uuid']}", "a@2999-01-01"):
        by_ref = cli("backups", "show", ref, "--repo", repo, "--json")
        assert (by_ref.rc, by_ref.json["id"]) == (0, 2), (ref, by_ref.err)
    assert cli("backups", "show", "a@-1", "--repo", repo, "--json").json["id"] == 1
    none = cli("backups", "show", "nobody@latest", "--repo", repo)
    assert none.rc == 7 and "'nobody' has no complete backups" in none.err
    bad = cli("backups", "show", "a@yesterday", "--repo", repo)
    assert bad.rc == 2 and "ISO 8601" in bad.err


def test_prune_then_gc_frees_only_what_no_kept_backup_uses(
    cli: Cli, new_repo: Callable[[str], Path], tmp_path: Path
) -> None:
    repo = new_repo("repo")
    images = [ext4_image(tmp_path, f"v{i}", i) for i in range(3)]
    for img in images:
        backup(cli, repo, img, "a")
    before = cli("repo", "stats", "--repo", repo, "--json")
    validate("repo stats", before.json)
    assert (before.json["backups"], before.json["vms"], before.json["images"]) == (3, 1, 3)

    dry = cli("prune", "--repo", repo, "--keep-last", "1", "--dry-run", "--json")
    assert dry.rc == 0, dry.err
    validate("prune", dry.json)
    assert dry.json["dry_run"] and (dry.json["kept_count"], dry.json["removed_count"]) == (1, 2)
    assert sorted(b["id"] for b in dry.json["vms"]["a"]["removed"]) == [1, 2]  # newest first
    assert dry.json["vms"]["a"]["kept"][0]["reasons"] == ["last"]
    assert len(cli("backups", "list", "--repo", repo, "--json").json) == 3

    pruned = cli("prune", "--repo", repo, "--keep-last", "1", "--json")
    assert pruned.rc == 0 and not pruned.json["dry_run"] and pruned.json["removed_count"] == 2
    assert [b["id"] for b in cli("backups", "list", "--repo", repo, "--json").json] == [3]

    collected = cli("gc", "--repo", repo, "--grace", "0", "--json")
    assert collected.rc == 0, collected.err
    validate("gc", collected.json)
    # The two pruned versions' data.bin chunks (random, unshared) are gone; the kept one stays.
    assert collected.json["chunks_deleted"] >= 2 * 300_000 // (64 * 1024)
    assert collected.json["bytes_freed"] > 0 and collected.json["space_needed"] == 0
    after = cli("repo", "stats", "--repo", repo, "--json").json
    assert after["stored_bytes"] < before.json["stored_bytes"]
    again = cli("gc", "--repo", repo, "--grace", "0", "--json").json
    assert (again["chunks_deleted"], again["bytes_freed"]) == (0, 0)

    checked = cli("verify", "--repo", repo, "--full", "--json")
    assert checked.rc == 0 and checked.json["ok"], checked.out
    validate("verify", checked.json)
    out = tmp_path / "restored.img"
    restored = cli("restore", "disk", "a@latest", "disk0", "--repo", repo, "--to", out, "--json")
    assert restored.rc == 0, restored.err
    validate("restore disk", restored.json)
    assert out.read_bytes() == images[2].read_bytes()
    human = cli("prune", "--repo", repo, "--keep-last", "1")
    assert human.rc == 0 and "Traceback" not in human.out + human.err


def test_verify_names_damage_and_exits_6(
    cli: Cli, new_repo: Callable[[str], Path], tmp_path: Path
) -> None:
    repo = new_repo("repo")
    backup(cli, repo, ext4_image(tmp_path, "a", 1), "a")
    (pack,) = [p for p in (repo / "packs").rglob("*") if p.is_file()]
    with pack.open("r+b") as f:  # a byte in the middle of the packed data.bin chunks
        f.seek(pack.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = cli("verify", "--repo", repo, "--full", "--json")
    assert r.rc == 6, r.err
    validate("verify", r.json)
    assert not r.json["ok"] and r.json["damaged"] and r.json["affected"]


def test_files_find_restore_file_and_rebuild_index(
    cli: Cli, new_repo: Callable[[str], Path], tmp_path: Path
) -> None:
    repo = new_repo("repo")
    img = ext4_image(tmp_path, "a", 7)
    backup(cli, repo, img, "a")
    found = cli("files", "find", "*.txt", "--repo", repo, "--json")
    assert found.rc == 0, found.err
    validate("files find", found.json)
    assert [(h["path"], h["size"], h["kind"]) for h in found.json] == [("/a.txt", 8, "file")]
    assert cli("files", "find", "nothing-matches", "--repo", repo, "--json").json == []

    target = tmp_path / "out"
    got = cli("restore", "file", "a@latest", "a.txt", "data.bin", "--repo", repo, "--to", target)
    assert got.rc == 0, got.err
    src = tmp_path / "a.src"
    for name in ("a.txt", "data.bin"):
        assert (target / name).read_bytes() == (src / name).read_bytes()
    again = cli("restore", "file", "1", "a.txt", "--repo", repo, "--to", target, "--json")
    assert again.rc == 0, again.err  # an existing file is skipped, not replaced
    validate("restore file", again.json)
    assert (again.json["files"], len(again.json["skipped"])) == (0, 1)
    escape = cli("restore", "file", "1", "../etc/passwd", "--repo", repo, "--to", target)
    assert escape.rc == 2 and "must not contain '..'" in escape.err

    (repo / "index.db").unlink()
    rebuilt = cli("repo", "rebuild-index", "--repo", repo, "--json")
    assert rebuilt.rc == 0, rebuilt.err
    validate("repo rebuild-index", rebuilt.json)
    assert rebuilt.json["complete"] and (rebuilt.json["backups"], rebuilt.json["images"]) == (1, 1)


def test_block_size_and_compression_take_effect(cli: Cli, tmp_path: Path) -> None:
    img = ext4_image(tmp_path, "t", 3, text=True)
    docs: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
    for name, flags in (
        ("small-plain", ("--block-size", "16K", "--compression", "none")),
        ("zstd", ("--block-size", "1M", "--compression", "zstd:19")),
    ):
        repo = tmp_path / name
        init = cli("repo", "init", "--repo", repo, *flags)
        assert init.rc == 0, init.err
        assert flags[1].removesuffix("K").removesuffix("M") in init.out
        disk = backup(cli, repo, img, "t")["vms"][0]["disks"][0]
        (image,) = cli("backups", "show", "1", "--repo", repo, "--json").json["images"]
        stats = cli("repo", "stats", "--repo", repo, "--json").json
        docs[name] = (disk, image, stats)
        out = tmp_path / f"{name}.restored"
        assert cli("restore", "disk", "1", "disk0", "--repo", repo, "--to", out).rc == 0
        assert out.read_bytes() == img.read_bytes()
    disk, image, stats = docs["small-plain"]
    assert image["block_size"] == 16 * 1024
    assert disk["stored_bytes"] == disk["new_bytes"] and stats["compression_ratio"] == 1.0
    disk, image, stats = docs["zstd"]
    assert image["block_size"] == 1024 * 1024
    assert disk["stored_bytes"] * 20 < disk["new_bytes"] and stats["compression_ratio"] > 20
    bad_values: list[tuple[tuple[str, ...], str]] = [
        (("--block-size", "3K"), "block size 3072 is not a power of two"),
        (("--block-size", "lots"), "'lots' is not a size"),
        (("--compression", "lz9"), "unknown compression 'lz9'"),
        (("--compression", "zstd:x"), "zstd level 'x' is not a number"),
    ]
    for bad_flags, error in bad_values:
        bad = cli("repo", "init", "--repo", tmp_path / "bad", *bad_flags)
        assert bad.rc == 2 and error in bad.err, (bad_flags, bad.err)
        assert not (tmp_path / "bad").exists()

"""Proof of the ransomware signals: three histories of 30 normal guest days each (different
seeds) on a real ext4 guest disk, backed up daily with standalone ``--source file:`` backups,
then one day on which 30 % of the files are encrypted and renamed to ``*.locked`` with a
ransom note. That day is suspicious in all three; over the 90 normal days there is no
suspicious verdict and at most 3 unusual ones. Then the CLI: the verdict column and reasons,
``--clean``, prune's protection and ``backups ack``. Then a shorter history for the settings:
a per-VM ``anomaly.toml`` bar flags an ordinary day; an OS upgrade acked with ``--pattern``
does not fire on the next upgrade, while a ransomware day afterwards is still suspicious
(and its in-place encryption fires the volume-metadata signal)."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from testbed.guestimages.builder import build_image
from testbed.guestimages.model import GuestImage
from testbed.guestimages.mounts import mounted
from testbed.guestimages.ransom import RANSOM_NOTE, SMALL, normal_day, ransomware_day
from tests.plugin.conftest import Cli
from tests.plugin.jsonshape import validate
from vmaccel.cli.app import main

DAYS = 30
SEEDS = (11, 22, 33)
LOCKED_SHARE = 0.3


def _run(*args: str | Path) -> str:
    """Run the CLI in a module-scoped fixture (no capsys there); returns its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in args]) == 0
    return out.getvalue()


def _history(repo: Path, workdir: Path, seed: int) -> None:
    """Back up the first state, DAYS normal days and the ransomware day."""
    workdir.mkdir()
    image = build_image(SMALL, workdir / "small.img")
    _run("repo", "init", "--repo", repo)
    backup = ("backup", "--repo", repo, "--source", f"file:{image.path}", "--name", "g")
    _run(*backup)
    for day in range(1, DAYS + 1):
        image = normal_day(image, seed, day)
        _run(*backup)
    attack = ransomware_day(image, LOCKED_SHARE, seed)
    assert all(len(a.encrypted) >= 10 for a in attack)
    report = json.loads(_run(*backup, "--json"))
    (warning,) = report["vms"][0]["warnings"]  # the run says so at once
    assert warning.startswith(f"backup {DAYS + 2} is suspicious: disk0: ")


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """seed -> its repository, built once for the module."""
    out = {}
    for seed in SEEDS:
        base = tmp_path_factory.mktemp(f"seed{seed}")
        _history(base / "repo", base / "guest", seed)
        out[seed] = base / "repo"
    return out


def test_ransomware_day_is_suspicious_in_every_history_and_normal_days_are_not(
    histories: dict[int, Path], cli: Cli
) -> None:
    levels: Counter[str] = Counter()
    for seed, repo in histories.items():
        docs = cli("backups", "list", "--repo", repo, "--json").json
        validate("backups list", docs)
        assert len(docs) == DAYS + 2
        normal_days = docs[1 : DAYS + 1]  # the first backup is the initial full, no day
        levels.update(d["verdict"]["level"] for d in normal_days)
        assert [d["verdict"]["learning"] for d in docs[:6]] == [True] * 5 + [False]
        attack = docs[-1]["verdict"]
        assert attack["level"] == "suspicious", (seed, attack)
        reasons = "\n".join(attack["reasons"])
        assert f"ransom-note names appeared (/{RANSOM_NOTE})" in reasons
        assert "files with new extensions (locked)" in reasons
    # The figure the issue asks for: 90 normal days, 0 suspicious, at most 3 unusual.
    print(f"false positives over {sum(levels.values())} normal days: {dict(levels)}")
    assert sum(levels.values()) == DAYS * len(SEEDS)
    assert levels["suspicious"] == 0 and levels["unusual"] <= 3


def test_cli_shows_verdicts_filters_clean_points_and_prune_keeps_until_ack(
    histories: dict[int, Path], cli: Cli
) -> None:
    repo = histories[SEEDS[0]]
    last = DAYS + 2
    table = cli("backups", "list", "--repo", repo)
    assert table.rc == 0 and "suspicious" in table.out and "normal (learning)" in table.out
    shown = cli("backups", "show", "--repo", repo, str(last))
    assert "verdict: suspicious" in shown.out and "new extensions (locked)" in shown.out
    clean = cli("backups", "list", "--repo", repo, "--vm", "g", "--clean", "--json").json
    assert [b["id"] for b in clean] == list(range(1, last))

    pruned = cli("prune", "--repo", repo, "--keep-last", "1", "--dry-run", "--json")
    assert pruned.rc == 0, pruned.err
    validate("prune", pruned.json)
    kept = {k["id"]: k["reasons"] for k in pruned.json["vms"]["g"]["kept"]}
    assert kept == {last: ["suspicious, not acknowledged (vmaccel backups ack ID)", "last"]}

    acked = cli("backups", "ack", "--repo", repo, "g@latest", "--json")
    assert acked.rc == 0, acked.err
    validate("backups ack", acked.json)
    assert acked.json["acked"] and acked.json["verdict"]["level"] == "suspicious"
    clean = cli("backups", "list", "--repo", repo, "--vm", "g", "--clean", "--json").json
    assert len(clean) == last
    pruned = cli("prune", "--repo", repo, "--keep-last", "1", "--dry-run", "--json")
    kept = {k["id"]: k["reasons"] for k in pruned.json["vms"]["g"]["kept"]}
    assert kept == {last: ["last"]}


UPGRADE_SHARE = 0.4  # share of the volume's plain files an "OS upgrade" rewrites
PACKAGES = 12  # package files an upgrade drops into its cache (removing the last upgrade's)


def _os_upgrade(image: GuestImage, release: int) -> None:
    """What a package upgrade does to each volume: rewrite UPGRADE_SHARE of the plain files
    with new (compressible) content, clean the package cache and fill it with PACKAGES
    ``.rpm`` files."""
    for vol in image.volumes:
        with mounted(image.path, vol, read_only=False) as root:
            files = sorted(
                p for p in vol.files if (root / p).is_file() and not (root / p).is_symlink()
            )
            for p in files[: round(UPGRADE_SHARE * len(files))]:
                (root / p).write_bytes(b"release %d of %s\n" % (release, p.encode()) * 64)
            cache = root / "var-cache-pkg"
            cache.mkdir(exist_ok=True)
            for old in cache.iterdir():
                old.unlink()
            for n in range(PACKAGES):
                (cache / f"pkg{n}-{release}.rpm").write_bytes(b"package %d\n" % n * 500)


def test_acked_upgrade_stops_firing_ransomware_still_does_and_thresholds_apply(
    tmp_path: Path, cli: Cli
) -> None:
    repo = tmp_path / "repo"
    image = build_image(SMALL, tmp_path / "small.img")
    _run("repo", "init", "--repo", repo)
    backup = ("backup", "--repo", repo, "--source", f"file:{image.path}", "--name", "g")

    def level() -> dict[str, Any]:
        _run(*backup)
        return cli("backups", "show", "--repo", repo, "g@latest", "--json").json["verdict"]

    _run(*backup)
    for day in range(1, 7):  # past learning
        image = normal_day(image, 5, day)
        assert level()["level"] == "normal"
    # a lowered bar, for this VM only, flags an ordinary day
    (repo / "anomaly.toml").write_text('[vm."g"]\nchanged_unusual = 0.01\n')
    shown = cli("backups", "thresholds", "--repo", repo, "--vm", "g", "--json").json
    assert shown["thresholds"]["changed_unusual"] == 0.01 and shown["overrides"] == ["g"]
    image = normal_day(image, 5, 7)
    assert level()["level"] == "unusual"
    (repo / "anomaly.toml").unlink()

    _os_upgrade(image, 1)
    first = level()
    assert first["level"] == "suspicious", first
    acked = cli("backups", "ack", "--repo", repo, "g@latest", "--pattern", "--json")
    assert acked.rc == 0, acked.err
    assert {f["kind"] for f in acked.json["pattern"]["findings"]} >= {"changed", "new_extensions"}
    image = normal_day(image, 5, 8)
    assert level()["level"] == "normal"
    _os_upgrade(image, 2)
    second = level()
    assert second["level"] != "suspicious", second
    assert any("acknowledged pattern 1: " in r for r in second["reasons"])

    ransomware_day(image, LOCKED_SHARE, 5)
    # this small disk writes ~1 MiB a day: let the byte signals judge that little
    (repo / "anomaly.toml").write_text("[thresholds]\nmin_new_bytes = 0\n")
    attack = level()
    assert attack["level"] == "suspicious", attack
    assert any("(locked)" in r for r in attack["reasons"])
    # encrypted in place: new data, no allocation change (the volume-metadata signal)
    assert any(r.endswith("(data rewritten in place)") for r in attack["reasons"])

    listed = cli("backups", "patterns", "--repo", repo, "--vm", "g", "--json").json
    assert [p["id"] for p in listed] == [1]
    assert cli("backups", "forget-pattern", "--repo", repo, "1").rc == 0
    assert cli("backups", "patterns", "--repo", repo, "--json").json == []


def test_thresholds_and_patterns_commands_refuse_what_they_cannot_do(
    tmp_path: Path, cli: Cli
) -> None:
    repo = tmp_path / "repo"
    image = build_image(SMALL, tmp_path / "small.img")
    _run("repo", "init", "--repo", repo)
    _run("backup", "--repo", repo, "--source", f"file:{image.path}", "--name", "g")
    shown = cli("backups", "thresholds", "--repo", repo)
    assert shown.rc == 0 and "defaults (no " in shown.out and "changed_unusual = 0.2" in shown.out
    (repo / "anomaly.toml").write_text("[thresholds]\nchange_unusual = 0.1\n")
    bad = cli("backups", "thresholds", "--repo", repo)
    assert bad.rc == 2 and "unknown anomaly threshold 'change_unusual'" in bad.err
    nothing = cli("backups", "ack", "--repo", repo, "g@latest", "--pattern")
    assert nothing.rc == 2 and "no finding to accept" in nothing.err
    assert cli("backups", "show", "--repo", repo, "g@latest", "--json").json["acked"] is None
    assert cli("backups", "patterns", "--repo", repo).out.strip() == "no accepted patterns"
    assert cli("backups", "forget-pattern", "--repo", repo, "7").rc != 0

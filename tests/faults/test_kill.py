"""kill -9 of a real `vmaccel backup` process against the vSphere bed, across whole runs.

One VM with a 16 MiB ext4 disk (so the allocation map and the file catalog have work). Each
round: a guest write; a `vmaccel backup` subprocess (full: CBT reset first; incremental; or
`--rescan`; http or file transport) killed with SIGKILL at an aimed moment (`killer.Aim`: a
phase of the run, the n-th entry into it, a few ms of random delay; or a random time after
start); then the checks; then a second guest write and a clean backup. After every kill:

1. `vmaccel verify --full` exits 0;
2. every complete backup has its image, none disappeared, and a backup the killed run
   committed (kill after the commit) restores byte-identical to the disk it was taken from;
3. the clean run removes the leftover vmaccel snapshot, leaves the user's snapshot alone,
   succeeds, and its backup restores byte-identical (`restore disk`): after a killed
   incremental this proves no CBT baseline moved forward without its images.

At the end every complete backup is restored once more and compared with the SHA-256 of the
disk at its snapshot (guest writes happen between runs only, so that is the disk before the
run). Kills are counted per phase where they landed.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testbed.vsphere.bed import VmInfo, VsphereBed, start_bed
from tests.faults.faultbed import MiB, register_vcenter
from tests.faults.killer import Aim, Outcome, run_killed
from tests.faults.tally import Tally, long_run, record, scale
from tests.plugin.conftest import Cli
from tests.plugin.vimcheck import create_snapshot, snapshots
from vmaccel.catalog import Repository

pytestmark = pytest.mark.vsphere

USER_SNAPSHOT = "user-keep"
# Phases every backup passes through, in run order; "start" is a random time after start-up.
COMMON = (
    "start", "login", "inventory", "leftovers", "snapshot", "allocation", "read",
    "image_write", "pack_write", "pack_seal", "finish_image", "commit", "manifest",
    "snapshot_remove", "file_catalog",
)  # fmt: skip
PLANS: dict[str, tuple[str, ...]] = {
    "full": COMMON,
    "incremental": (*COMMON[:5], "cbt_query", *COMMON[5:]),
    "rescan": ("cbt_query", "read", "image_write", "pack_write", "commit", "snapshot_remove"),
}
REPEATED = {"read", "image_write"}  # entered more than once in every run


def guest_disk(where: Path) -> tuple[Path, list[int]]:
    """A 16 MiB ext4 disk (no partition table) with a few files; returns it and the disk
    offsets of the 4 KiB blocks of its big file, where guest writes go (writes elsewhere
    could land in free blocks, which V-Ray rightly leaves out)."""
    src = where / "tree"
    src.mkdir()
    rng = random.Random(7)
    for i in range(12):
        (src / f"f{i}.bin").write_bytes(rng.randbytes(rng.randrange(1, 200_000)))
    (src / "big.bin").write_bytes(rng.randbytes(4 * MiB))
    disk = where / "disk.img"
    mkfs = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(src), str(disk), "16M"]
    subprocess.run(mkfs, check=True)
    out = subprocess.run(
        ["debugfs", "-R", "blocks /big.bin", str(disk)], capture_output=True, text=True, check=True
    ).stdout
    blocks = [int(b) * 4096 for b in re.findall(r"\d+", out)]
    assert len(blocks) == 1024, out
    return disk, blocks


@pytest.fixture(scope="module")
def kill_bed() -> Iterator[VsphereBed]:
    # A 1 MiB QueryChangedDiskAreas window: the CBT query loops over pages.
    with start_bed(qcda_window=1 * MiB, machines=2) as bed:
        yield bed


@dataclass
class KillLoop:
    """The VM, its repository, what every complete backup must restore to, and the counts."""

    bed: VsphereBed
    cli: Cli
    repo: Path
    vm: str
    moref: str
    key: int
    blocks: list[int]
    work: Path
    tally: Tally
    rng: random.Random
    expected: dict[int, str] = field(default_factory=dict)  # backup id -> disk SHA-256
    landed: Counter[str] = field(default_factory=Counter)
    missed: Counter[str] = field(default_factory=Counter)
    user_snapshot: bool = False  # the user's snapshot exists and must stay

    @property
    def disk_name(self) -> str:
        return f"disk-{self.key}"

    def args(self, transport: str, *extra: str) -> list[str]:
        ds = f"LocalDS_0={self.bed.datastore_dirs['LocalDS_0']}"
        return [
            "backup", "--repo", str(self.repo), "--vcenter", "bed", "--vm", self.vm,
            "--transport", transport, "--datastore-path", ds, *extra,
        ]  # fmt: skip

    def guest_write(self) -> None:
        offset = self.rng.choice(self.blocks[:-16])
        data = self.rng.randbytes(self.rng.randrange(1, 16) * 4096)
        self.bed.control.guest_write(self.vm, self.key, offset, data)

    def disk_sha(self) -> str:
        (vm,) = [v for v in self.bed.control.vms() if v.moref == self.moref]
        (disk,) = [d for d in vm.disks if d.key == self.key]
        return hashlib.sha256(disk.path.read_bytes()).hexdigest()

    def complete(self) -> dict[int, set[str]]:
        """backup id -> its images' disk names, for every complete backup of the VM."""
        with Repository.open(self.repo) as r:
            return {b.id: {i.disk for i in r.images(b)} for b in r.backups(self.vm)}

    def restored_sha(self, backup_id: int) -> str:
        target = self.work / "restored.img"
        result = self.cli(
            "restore", "disk", str(backup_id), self.disk_name, "--to", target,
            "--repo", self.repo, "--force",
        )  # fmt: skip
        assert result.rc == 0, result.err
        return hashlib.sha256(target.read_bytes()).hexdigest()

    def uncatalogued(self) -> set[int]:
        """Complete backups that `files find` does not show holding the big file."""
        found = self.cli("files", "find", "/big.bin", "--repo", self.repo, "--json")
        assert found.rc == 0, found.err
        return set(self.complete()) - {hit["backup_id"] for hit in found.json}

    def clean_run(self) -> tuple[bool, bool]:
        """A guest write and a backup that must succeed. (damaged, wrong)."""
        self.guest_write()
        want, before = self.disk_sha(), set(self.complete())
        leftovers = sorted(n for n in snapshots(self.bed, self.moref) if n.startswith("vmaccel-"))
        result = self.cli(*self.args(self.rng.choice(["http", "file"])), "--json")
        assert result.rc == 0, result.err + result.out
        removed = [w for w in result.vms[self.vm]["warnings"] if "leftover snapshot" in w]
        assert len(removed) == len(leftovers), (leftovers, removed)
        (new,) = set(self.complete()) - before
        self.expected[new] = want
        snaps = snapshots(self.bed, self.moref)
        damaged = any(n.startswith("vmaccel-") for n in snaps)
        damaged |= self.user_snapshot and USER_SNAPSHOT not in snaps
        damaged |= bool(self.uncatalogued())  # a kill in the file catalog left a gap
        return damaged, self.restored_sha(new) != want

    def kill_round(self, mode: str, aims: list[Aim], transport: str) -> list[Outcome]:
        """Killed runs one after the other (each checked), then the clean run, counted."""
        if mode == "full":
            self.bed.control.reset_cbt(self.vm)
        outs, flags = [], []
        for aim in aims:
            out, damaged, lost, wrong = self._killed(mode, aim, transport)
            outs.append(out)
            flags.append((out, damaged, lost, wrong))
        more_damage, more_wrong = self.clean_run()
        for out, damaged, lost, wrong in flags:
            if out.killed:
                self.landed[out.landed] += 1
                self.tally.add(damaged=damaged or more_damage, lost=lost, wrong=wrong or more_wrong)
            assert (damaged, lost, wrong) == (False,) * 3, (out.landed, damaged, lost, wrong)
        assert (more_damage, more_wrong) == (False, False), (
            [o.landed for o in outs],
            f"uncatalogued {self.uncatalogued()}",
            snapshots(self.bed, self.moref),
        )
        return outs

    def _killed(self, mode: str, aim: Aim, transport: str) -> tuple[Outcome, bool, bool, bool]:
        """A guest write, one aimed run and its checks: (outcome, damaged, lost, wrong)."""
        self.guest_write()
        want, before = self.disk_sha(), self.complete()
        extra = ["--rescan"] if mode == "rescan" else []
        out = run_killed(["--debug", *self.args(transport, *extra)], os.environ, aim)
        after = self.complete()
        lost = not before.keys() <= after.keys()
        damaged = any(disks != {self.disk_name} for disks in after.values())
        damaged |= self.cli("verify", "--repo", self.repo, "--full").rc != 0
        wrong = False
        for new in after.keys() - before.keys():  # the kill came after the commit
            self.expected[new] = want
            wrong |= self.restored_sha(new) != want
        if not out.killed:
            assert out.rc == 0, out.stderr[-3000:]
            self.missed[aim.phase] += 1
        return out, damaged, lost, wrong

    def final_check(self) -> None:
        """gc collects what the killed runs left (unfinished backups, their manifests and
        chunks) and nothing else: verify is clean after it, no unfinished backup remains,
        every complete backup restores as the disk it was taken from, and the next
        incremental still succeeds on the baselines that are left."""
        unfinished = self._unfinished()
        assert unfinished, "no killed run left an unfinished backup: the kills missed"
        gc = self.cli("gc", "--repo", self.repo, "--grace", "0")
        assert gc.rc == 0, gc.err
        assert self._unfinished() == [], "gc left unfinished backups"
        with Repository.open(self.repo) as r:
            orphans = set(r.packs.names()) - {p.name for p in r.index.packs()}
            manifests = set(r.manifest_names()) - {b.uuid for b in r.backups(None)}
        temporary = set((self.repo / "packs" / "tmp").glob("*"))  # packs being written
        assert (orphans, manifests, temporary) == (set(), set(), set()), "gc left garbage"
        assert self.cli("verify", "--repo", self.repo, "--full").rc == 0
        damaged, wrong = self.clean_run()
        assert (damaged, wrong) == (False, False)
        assert set(self.complete()) == set(self.expected)
        bad = [b for b, sha in self.expected.items() if self.restored_sha(b) != sha]
        self.tally.lost += len(set(self.expected) - set(self.complete()))
        self.tally.wrong_bytes += len(bad)
        assert not bad, f"backups {bad} restore wrong bytes"

    def _unfinished(self) -> list[int]:
        with Repository.open(self.repo) as r:
            return [b.id for b in r.backups(self.vm, state=None) if b.state != "complete"]


def schedule(rng: random.Random, kills: int) -> Iterator[tuple[str, list[Aim], str]]:
    """(mode, aims, transport) for about `kills` kills: the phases in turn, each in the modes
    that have it in turn; a random n-th entry into repeated phases and a random delay of
    0-5 ms (none half the time). A kill in `leftovers` needs a leftover snapshot, so a kill
    after the snapshot (in `allocation`) goes first."""
    phases = PLANS["incremental"]
    turn: Counter[str] = Counter()
    done = rounds = 0
    while done < kills:
        phase = phases[rounds % len(phases)]
        rounds += 1
        modes = [m for m in ("incremental", "full", "rescan") if phase in PLANS[m]]
        mode = modes[turn[phase] % len(modes)]
        turn[phase] += 1
        nth = rng.randint(1, 2) if phase in REPEATED else 1
        delay = rng.uniform(0.0, 1.5) if phase == "start" else rng.choice([0, 0.005]) * rng.random()
        aims = [Aim(phase, nth, delay)]
        if phase == "leftovers":
            aims.insert(0, Aim("allocation"))
        done += len(aims)
        yield mode, aims, rng.choice(["http", "http", "file"])


@pytest.fixture(scope="module")
def _unused_vms(kill_bed: VsphereBed) -> list[VmInfo]:
    return sorted(kill_bed.control.vms(), key=lambda v: v.name, reverse=True)


@pytest.fixture
def loop(
    kill_bed: VsphereBed,
    _unused_vms: list[VmInfo],
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[KillLoop]:
    vm = _unused_vms.pop()
    image, blocks = guest_disk(tmp_path)
    disk = kill_bed.control.attach_disk(vm.name, image)
    register_vcenter(cli, monkeypatch, kill_bed, "bed")
    repo = tmp_path / "repo"
    assert cli("repo", "init", "--repo", repo).rc == 0
    tally = Tally("test_kill", "kill", notes=[request.node.name])
    yield KillLoop(
        kill_bed, cli, repo, vm.name, vm.moref, disk.key, blocks, tmp_path, tally,
        random.Random(f"kill-{long_run()}"),
    )  # fmt: skip
    record(tally)


def test_kill_minus_nine_across_full_and_incremental_runs(loop: KillLoop) -> None:
    # The very first run (CBT off, no earlier backup) is killed while it enables CBT.
    (first,) = loop.kill_round("full", [Aim("cbt_enable")], "http")
    assert first.killed and first.landed in ("cbt_enable", "after:cbt_enable"), first.landed
    create_snapshot(loop.bed, loop.moref, USER_SNAPSHOT, "the user's, never touched")
    loop.user_snapshot = True
    for mode, aims, transport in schedule(loop.rng, scale(24, 110)):
        loop.kill_round(mode, aims, transport)
    loop.final_check()
    loop.tally.notes.append(f"landed {dict(sorted(loop.landed.items()))}")
    loop.tally.notes.append(f"missed {dict(sorted(loop.missed.items()))}")
    print(loop.tally)
    assert loop.tally.runs >= scale(20, 100), loop.tally
    assert len([p for p in loop.landed if not p.startswith("after:")]) >= 10, loop.landed


def test_kill_in_the_file_catalog_leaves_no_restore_point_unsearchable(loop: KillLoop) -> None:
    # A backup is complete before its files are catalogued: a kill then must not leave it out
    # of `files find` for good. Also two such kills in a row (the second run is killed while
    # it catches up the first, or in its own catalog), before a run that ends.
    assert loop.clean_run() == (False, False)
    rounds = [[Aim("file_catalog")], [Aim("file_catalog"), Aim("file_catalog", nth=2)]]
    rounds.append([Aim("file_catalog"), Aim("file_catalog")])
    for aims in rounds:
        outs = loop.kill_round("incremental", aims, "file")
        assert all(o.killed and o.landed == "file_catalog" for o in outs), outs
    record_note = f"landed {dict(loop.landed)}"
    loop.tally.notes.append(record_note)

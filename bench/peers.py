"""The peers the benches compare vmaccel with: borg (two chunkers) and restic, at their best here.

Every bench takes the peers' command lines from here, so ``bench/README.md``'s "Fairness"
section describes all of them at once. Each :class:`Peer` is one configuration of one tool;
its ``why`` says why these are the tool's best settings for a raw disk image on this machine.
Flags that depend on the installed version (``--sparse`` on restore) are detected from the
tool's ``--help`` and reported in every result (``restore_flags``), never assumed.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

BORG_FIXED = "fixed,4194304"


@dataclass(frozen=True)
class Peer:
    """One peer configuration. ``name`` keys its results ("borg", "borg-fixed4m", "restic");
    ``tool`` is the executable, ``package`` its Debian package."""

    name: str
    tool: str
    package: str
    create_flags: tuple[str, ...]
    why: str

    def installed(self) -> bool:
        return shutil.which(self.tool) is not None

    def version(self) -> str:
        return tool_version(self.tool)

    def env(self, top: Path, repo: Path) -> dict[str, str]:
        """Environment for this peer's commands: its caches under ``top``, no prompts."""
        return {
            "BORG_BASE_DIR": str(top / "home"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
            "RESTIC_PASSWORD": "bench",
            "RESTIC_CACHE_DIR": str(top / "cache"),
            "RESTIC_REPOSITORY": str(repo),
        }

    def init_argv(self, repo: Path) -> list[str]:
        if self.tool == "borg":
            return ["borg", "init", "-e", "none", str(repo)]
        return ["restic", "init", "--repository-version", "2"]

    def backup_argv(self, repo: Path, archive: str, path: str) -> list[str]:
        """Back ``path`` (relative to the working directory) up as ``archive``."""
        if self.tool == "borg":
            return ["borg", "create", *self.create_flags, f"{repo}::{archive}", path]
        return ["restic", "backup", *self.create_flags, "--host", "bench", path]

    def restore_flags(self) -> tuple[str, ...]:
        """``--sparse`` when the installed version's restore has it (borg >= 1.2, restic
        >= 0.15): all-zero chunks become holes instead of written and synced zeros."""
        sub = "extract" if self.tool == "borg" else "restore"
        return ("--sparse",) if "--sparse" in tool_help(self.tool, sub) else ()

    def restore_argv(self, repo: Path, archive: str, target: Path) -> list[str]:
        """Restore ``archive`` (restic: its latest snapshot) into ``target`` (borg: the
        working directory, which the caller sets to ``target``)."""
        if self.tool == "borg":
            return ["borg", "extract", *self.restore_flags(), f"{repo}::{archive}"]
        return ["restic", "restore", *self.restore_flags(), "latest", "--target", str(target)]

    def describe(self) -> dict[str, object]:
        """The settings as every bench reports them."""
        return {
            "tool": self.tool,
            "version": self.version(),
            "create_flags": list(self.create_flags),
            "restore_flags": list(self.restore_flags()),
            "restore_sparse": "--sparse" in self.restore_flags(),
        }


PEERS = (
    Peer(
        "borg",
        "borg",
        "borgbackup",
        ("--compression", "zstd,3"),
        "borg's default buzhash chunker (content-defined, ~2 MiB chunks); zstd level 3, the "
        "codec and level vmaccel stores with; no encryption, like the vmaccel repositories",
    ),
    Peer(
        "borg-fixed4m",
        "borg",
        "borgbackup",
        ("--compression", "zstd,3", "--chunker-params", BORG_FIXED, "--sparse"),
        "the fixed 4 MiB chunker borg's documentation recommends for raw disk images (no "
        "rolling hash to compute; aligned with the image's blocks) and --sparse, which skips "
        "the holes of sparse input (fixed chunker only)",
    ),
    Peer(
        "restic",
        "restic",
        "restic",
        (),
        "repository format 2 with its default compression (auto: zstd, fast level); restic's "
        "content-defined chunker has no options; its concurrency stays at its defaults",
    ),
)


@cache
def tool_version(tool: str) -> str:
    done = subprocess.run(
        [tool, "version" if tool == "restic" else "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


@cache
def tool_help(tool: str, sub: str) -> str:
    done = subprocess.run([tool, sub, "--help"], capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def fastest(walls: dict[str, float], tool: str) -> tuple[str, float] | None:
    """(name, wall) of the fastest configuration of ``tool`` among ``walls`` (by peer name)."""
    names = {p.name for p in PEERS if p.tool == tool}
    runs = [(w, n) for n, w in walls.items() if n in names]
    return (min(runs)[1], min(runs)[0]) if runs else None

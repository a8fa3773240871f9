"""Running the external storage tools (mkfs, sfdisk, LVM, mtools, mount) with one environment."""

from __future__ import annotations

import os
import subprocess

# mtools reads names as UTF-8 and FAT timestamps (local time on disk) as UTC only if told so;
# LVM warns about every inherited descriptor (pytest's) unless told not to.
TOOL_ENV = {
    "LANG": "C.UTF-8",
    "TZ": "UTC",
    "MTOOLS_SKIP_CHECK": "1",
    "LVM_SUPPRESS_FD_WARNINGS": "1",
}


def run(*args: str, stdin: str | None = None) -> str:
    """Run a tool and return its stdout; on failure raise with its stderr (which
    CalledProcessError would hide)."""
    env = {**os.environ, **TOOL_ENV}
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout

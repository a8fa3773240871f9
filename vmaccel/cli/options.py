"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RepoOpt = Annotated[
    Path | None,
    typer.Option(
        "--repo", "-r", help="Repository directory (default: $VMACCEL_REPO).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
LockWaitOpt = Annotated[
    float,
    typer.Option(
        "--lock-wait",
        min=0.0,
        metavar="SECONDS",
        help="Wait this long for another writer to finish instead of failing.",
    ),
]
BackupArg = Annotated[
    str,
    typer.Argument(
        metavar="BACKUP",
        help="Backup: ID, UUID, VM@latest, VM@-N (N before the newest) or VM@<ISO time>.",
    ),
]

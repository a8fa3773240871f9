"""Progress bars for people (rich), silent for scripts (``--json``) and non-terminals."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vmaccel.cli.output import err_console

Tracker = Callable[[str, int], Callable[[int], None]]


@contextlib.contextmanager
def byte_progress(enabled: bool) -> Iterator[Tracker]:
    """Yields ``track(label, total_bytes) -> advance(n)``; draws on stderr when enabled."""
    if not enabled or not err_console.is_terminal:
        yield lambda label, total: lambda n: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    with bar:

        def track(label: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(label, total=total or None)
            return lambda n: bar.advance(task, n)

        yield track

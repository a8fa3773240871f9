"""Usage errors: every command, group and bad value ends in click's short usage text and exit
code 2, never a traceback, whichever click typer runs on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from tests.plugin.conftest import Cli
from vmaccel.cli import app as app_module
from vmaccel.cli.app import app, main

VMACCEL = Path(sys.executable).with_name("vmaccel")  # the installed entry point
USAGE_EXIT = 2


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


# Discovered from the command tree, not listed by hand: a new command is walked too.
COMMANDS = list(_walk(typer.main.get_command(app)))
GROUPS = [path for path, command in COMMANDS if hasattr(command, "commands")]
REQUIRING = [path for path, command in COMMANDS if any(p.required for p in command.params)]


def _name(path: tuple[str, ...]) -> str:
    return " ".join(path) or "vmaccel"


def test_the_walk_finds_every_command() -> None:
    names = {_name(p) for p, _ in COMMANDS}
    assert {"backup", "restore disk", "backups show", "mount", "vcenter add", "gc"} <= names
    assert {"vmaccel", "backups", "repo", "restore", "files", "vcenter"} <= set(map(_name, GROUPS))
    assert {"restore disk", "mount", "backups show", "files find"} <= set(map(_name, REQUIRING))


def _assert_usage(rc: int, out: str, err: str, command: str, error: str) -> None:
    assert rc == USAGE_EXIT, (rc, out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert lines[0].startswith(f"Usage: {command} "), err
    assert lines[1] == f"Try '{command} --help' for help.", err
    assert sum(line.startswith("Error:") for line in lines) == 1, err
    # The error ends the output; click lists the choices of an enum option on lines of their own.
    first = next(n for n, line in enumerate(lines) if line.startswith("Error: "))
    assert first >= 2 and error in " ".join(lines[first:]), err


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=_name)
def test_unknown_option_is_a_usage_error(cli: Cli, path: tuple[str, ...]) -> None:
    r = cli(*path, "--no-such-option")
    _assert_usage(
        r.rc, r.out, r.err, " ".join(("vmaccel", *path)), "No such option: --no-such-option"
    )


@pytest.mark.parametrize("path", REQUIRING, ids=_name)
def test_missing_argument_is_a_usage_error(cli: Cli, path: tuple[str, ...]) -> None:
    r = cli(*path)
    _assert_usage(r.rc, r.out, r.err, " ".join(("vmaccel", *path)), "Missing ")


@pytest.mark.parametrize("path", GROUPS, ids=_name)
def test_group_without_sub_command_prints_help(cli: Cli, path: tuple[str, ...]) -> None:
    r = cli(*path)
    assert r.rc == USAGE_EXIT
    assert "Traceback" not in r.out + r.err
    help_text = r.out + r.err
    assert f"Usage: {' '.join(('vmaccel', *path))} [OPTIONS] COMMAND [ARGS]..." in help_text
    _, command = next(c for c in COMMANDS if c[0] == path)
    for sub in command.commands:  # every sub-command is listed
        assert sub in help_text


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["backup", "--parallel", "0"], "Invalid value for '--parallel'"),
        (["backup", "--lock-wait", "abc"], "Invalid value for '--lock-wait'"),
        (["backup", "--lock-wait", "-1"], "Invalid value for '--lock-wait'"),
        (["prune", "--keep-last", "-1"], "Invalid value for '--keep-last'"),
        (["files", "find", "x", "--limit", "0"], "Invalid value for '--limit'"),
        (["backups", "show", "--repo"], "Option '--repo' requires an argument"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_bad_values_are_one_usage_error(cli: Cli, args: list[str], error: str) -> None:
    r = cli(*args)
    command = " ".join(["vmaccel", *(a for a in args[:2] if not a.startswith("-"))])
    _assert_usage(r.rc, r.out, r.err, command, error)


@pytest.mark.parametrize(
    ("args", "command", "error"),
    [
        (["backup", "--bogus"], "vmaccel backup", "No such option: --bogus"),
        (["restore", "disk"], "vmaccel restore disk", "Missing argument 'BACKUP'"),
        (["mount"], "vmaccel mount", "Missing argument"),
        (["backups", "show", "--repo"], "vmaccel backups show", "requires an argument"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_installed_entry_point(args: list[str], command: str, error: str) -> None:
    r = subprocess.run([VMACCEL, *args], capture_output=True, text=True, timeout=60)
    _assert_usage(r.returncode, r.stdout, r.stderr, command, error)


@pytest.mark.parametrize("args", [[], ["backups"]], ids=["vmaccel", "backups"])
def test_installed_entry_point_without_arguments_prints_help(args: list[str]) -> None:
    r = subprocess.run([VMACCEL, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == USAGE_EXIT
    assert "Traceback" not in r.stdout + r.stderr
    assert f"Usage: {' '.join(['vmaccel', *args])} [OPTIONS] COMMAND" in r.stdout + r.stderr


def test_the_handler_catches_the_click_typer_runs_on() -> None:
    """typer >= 0.2x raises the exceptions of its own click copy (``typer._click``), which the
    separate ``click`` package (installed here for sqlite-utils) does not catch: the CLI takes
    the base class from typer's own ``BadParameter``, whichever click that is."""
    base = app_module._CLICK_ERROR
    assert issubclass(typer.BadParameter, base) and base.__name__ == "ClickException"
    assert sys.modules[base.__module__].__name__.split(".")[0] in {"click", "typer"}
    click = pytest.importorskip("click")
    if base is not click.ClickException:  # the vendored case, the one a fresh install gets
        assert not issubclass(typer.BadParameter, click.ClickException)


def test_broken_pipe_is_quiet() -> None:
    """`vmaccel ... | head`: the reader went away; no message, no traceback, exit 1."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run(
            [VMACCEL, "--help"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write)
    assert (r.returncode, r.stderr) == (1, "")


def test_main_returns_codes_without_exiting() -> None:
    assert main(["--help"]) == 0
    assert main(["backup", "--bogus"]) == USAGE_EXIT

"""The ``vmaccel`` root command: sub-command groups, global options, and the one place where
errors become messages and exit codes.

Every failure ends as one line on stderr and an exit code (tracebacks only with ``--debug``):
usage errors as click prints them (exit 2, a group given no sub-command prints its help and
exits 2 too), :class:`~vmaccel.vocabulary.errors.VmaccelError` with its own code, and any
``OSError`` or SQLite I/O failure that no layer below foresaw as
:class:`~vmaccel.vocabulary.errors.LocalIOError` (:class:`~vmaccel.vocabulary.errors.NoSpaceLeft`
when a filesystem is full).
"""

from __future__ import annotations

import errno
import gc
import importlib
import logging
import os
import sqlite3
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any, Protocol, cast

import typer

from vmaccel.cli import signals
from vmaccel.cli.output import err_console
from vmaccel.vocabulary.errors import LocalIOError, VmaccelError

# The root's commands by the module of vmaccel.cli that holds them, in the order help lists
# them. A module with ``register(app)`` adds its commands itself; any other is a group (its
# ``app``) under the one name. A command line imports only its command's module (`restore`:
# 0.17 s of imports instead of 0.29 s for all); help, no command and an unknown one import all.
_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("repo", ("repo",)),
    ("backups", ("backups",)),
    ("vcenter", ("vcenter",)),
    ("backup", ("backup",)),
    ("maintenance", ("verify", "prune", "gc")),
    ("mount", ("mount", "umount")),
    ("restore", ("restore",)),
    ("files", ("files",)),
    ("policy", ("policy",)),
    ("jobs", ("jobs",)),
    ("token", ("token",)),
    ("instant", ("instant",)),
    ("user", ("user",)),
    ("serve", ("serve",)),
    ("worker", ("worker", "proxies")),
)
_HELP = ("--help", "-h")


def build(args: Sequence[str] | None = None) -> typer.Typer:
    """The root command with what ``args`` (a command line without the program name) needs:
    the module of the command it names, or every module (``None``, help, no or an unknown
    command)."""
    wanted = _module_of(args)
    root = typer.Typer(
        name="vmaccel",
        help="Accelerator backups for VMware vSphere: every backup a full, for the cost of an "
        "incremental.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    root.callback()(_root)
    for module, names in _MODULES:
        if wanted is None or module == wanted:
            loaded = importlib.import_module(f"vmaccel.cli.{module}")
            if hasattr(loaded, "register"):
                loaded.register(root)
            else:
                root.add_typer(loaded.app, name=names[0])
    return root


def _module_of(args: Sequence[str] | None) -> str | None:
    """The module of the command ``args`` name (root options are flags: the first word that
    is no option is the command), or None when every module is wanted."""
    for arg in args or ():
        if arg in _HELP:
            return None
        if not arg.startswith("-"):
            return next((m for m, names in _MODULES if arg in names), None)
    return None


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole command tree (for tests and tools that walk it)."""
    if name == "app":
        return build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _click_error() -> type[Exception]:
    """``ClickException`` of the click that typer runs on.

    Older typer releases run on the separate ``click`` package, newer ones (0.29) on a copy of
    it, ``typer._click``, whose exceptions the ``click`` package's classes do not catch (and
    ``click`` is only installed because another dependency wants it). ``typer.BadParameter``
    is public in both and derives from the running click's ``ClickException``, so its class
    hierarchy names the right base whatever typer is installed. ``typer.Exit`` and
    ``typer.Abort`` are likewise what the running click raises: click's own classes re-exported
    before the copy, typer's own (which the copy raises) since.
    """
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            return cast(type[Exception], cls)
    raise ImportError(f"typer {typer.__version__}: BadParameter derives from no ClickException")


class _ClickError(Protocol):
    """What main uses of a ClickException (the same in every click)."""

    exit_code: int

    def show(self) -> None: ...

    def format_message(self) -> str: ...


_CLICK_ERROR = _click_error()
_SQLITE_IO = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})  # primary result codes


def _commands(root: typer.Typer, args: Sequence[str]) -> list[tuple[str, Any]]:
    """The click commands that ``args`` invoke, root first, each with its name: for
    ``["--debug", "restore", "disk", "1"]`` vmaccel, restore, disk (root options are flags)."""
    chain: list[tuple[str, Any]] = [("vmaccel", typer.main.get_command(root))]
    for arg in args:
        sub = getattr(chain[-1][1], "commands", {}).get(arg)
        if sub is None:
            if arg.startswith("-"):
                continue
            break
        chain.append((arg, sub))
    return chain


def _command_path(root: typer.Typer, args: Sequence[str]) -> str:
    """``vmaccel restore disk`` for ``["--debug", "restore", "disk", "1", ...]``."""
    return " ".join(name for name, _ in _commands(root, args))


def _with_context(exc: Exception, root: typer.Typer, args: Sequence[str]) -> None:
    """Give a usage error raised without a click context (click's parser raises "option
    requires an argument" so) the context of the command ``args`` invoke, so that it too
    shows the usage line and the --help hint."""
    if getattr(exc, "ctx", False) is not None:
        return  # has one, or is no usage error
    ctx = None
    for name, command in _commands(root, args):
        ctx = command.context_class(command, parent=ctx, info_name=name)
    setattr(exc, "ctx", ctx)  # noqa: B010 - an attribute click declares on UsageError


def _as_vmaccel_error(
    exc: OSError | sqlite3.Error, root: typer.Typer, args: Sequence[str]
) -> VmaccelError:
    operation = f"during `{_command_path(root, args)}`"
    if isinstance(exc, OSError):
        return LocalIOError.from_os_error(exc, operation)
    code = exc.sqlite_errorcode & 0xFF  # the primary result code
    if code == sqlite3.SQLITE_FULL:
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return LocalIOError.from_os_error(full, f"writing the catalog index {operation}")
    return LocalIOError(f"the catalog index cannot be read or written ({exc}) {operation}")


def _is_io(exc: sqlite3.Error) -> bool:
    """An SQLite error that is the disk's, not ours: full, I/O error, cannot open."""
    code = exc.sqlite_errorcode & 0xFF
    return code == sqlite3.SQLITE_FULL or code in _SQLITE_IO


def _fail(exc: VmaccelError, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    err_console.print(f"vmaccel: error: {exc}", highlight=False, markup=False, soft_wrap=True)
    return exc.exit_code


def _broken_pipe() -> int:
    """stdout's reader went away (``vmaccel backups list | head -1``): not an error to
    report. Later writes (the interpreter's final flush) go to /dev/null, not to a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is no file (tests capture it)
        pass
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (also used by tests)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    signals.install()
    root = build(args)
    try:
        result = root(args=args, prog_name="vmaccel", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except VmaccelError as exc:
        return _fail(exc, debug)
    except typer.Exit as exc:
        return exc.exit_code
    except _CLICK_ERROR as exc:
        _with_context(exc, root, args)
        shown = cast(_ClickError, exc)
        if shown.format_message():  # empty: typer's rich help, already printed on stdout
            shown.show()  # click's short usage text (Usage:, Try ... --help, Error:), or help
        return shown.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("vmaccel: interrupted", highlight=False, markup=False)
        return 130
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return _broken_pipe()
        return _fail(_as_vmaccel_error(exc, root, args), debug)
    except sqlite3.Error as exc:
        if not _is_io(exc):
            raise
        return _fail(_as_vmaccel_error(exc, root, args), debug)


def run() -> None:
    code = main()
    # The process ends here: move every object out of the collector's reach so interpreter
    # shutdown does not traverse the whole heap (pyVmomi's and dissect's type tables) in a
    # last collection, ~50 ms of every command. Reference counting still frees and flushes.
    gc.freeze()
    sys.exit(code)

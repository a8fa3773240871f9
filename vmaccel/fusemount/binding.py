"""The only module that imports a FUSE binding: mfusepy, else fusepy (module ``fuse``).

Nothing is imported until :func:`load_binding` is called, so the rest of vmaccel (and
``import vmaccel.fusemount``) works on hosts without libfuse. When no binding loads,
:class:`~vmaccel.vocabulary.errors.FuseUnavailable` lists why each one failed.

:func:`serve` runs the FUSE main loop in the calling thread (it must be the main thread:
libfuse installs its SIGINT/SIGTERM/SIGHUP handlers there, which end the loop and unmount).
It uses two fast paths of the binding's low-level class:

* ``read`` hands the kernel's buffer to the operations' ``read_into`` as a ``memoryview``
  instead of returning ``bytes`` that the binding then copies (one copy less per read);
* ``open`` sets ``keep_cache``/``direct_io`` on the file info per handle, from the
  operations' ``open_flags(fh)`` (images: direct I/O; small files: page cache).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vmaccel.vocabulary.errors import FuseUnavailable

logger = logging.getLogger(__name__)

BINDINGS = ("mfusepy", "fuse")
LOOP_ENDED_BY_SIGNAL = 8


@dataclass(frozen=True)
class FuseOptions:
    """Mount options. ``max_read`` and ``max_readahead`` in bytes; timeouts in seconds."""

    fsname: str = "vmaccel"
    allow_other: bool = False
    max_read: int = 1 << 20
    max_readahead: int = 1 << 20
    entry_timeout: float = 1.0
    attr_timeout: float = 1.0
    negative_timeout: float = 0.0
    debug: bool = False
    read_only: bool = True
    noforget: bool = False  # keep every node id for the process's life (NFS export)

    def as_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "foreground": True,
            "ro": self.read_only,
            "default_permissions": True,
            "fsname": self.fsname.replace(",", "_"),
            "subtype": "vmaccel",
            "max_read": self.max_read,
            "max_readahead": self.max_readahead,
            "entry_timeout": self.entry_timeout,
            "attr_timeout": self.attr_timeout,
            "negative_timeout": self.negative_timeout,
        }
        if self.allow_other:
            kw["allow_other"] = True
        if self.debug:
            kw["debug"] = True
        if self.noforget:
            kw["noforget"] = True
        return kw


def load_binding(library: str | None = None) -> ModuleType:
    """Import mfusepy (else fusepy) and return the module.

    ``library`` names the libfuse to prefer (``"fuse3"`` or ``"fuse"``; ignored when it is not
    installed), for mfusepy only; it must be chosen before the first import in the process
    (mfusepy reads it at import time). libfuse 3 is preferred: with it the kernel sends reads
    of up to 1 MiB (libfuse 2: 128 KiB), which matters with ``direct_io``.
    """
    if library is not None and ctypes.util.find_library(library):
        os.environ.setdefault("FUSE_LIBRARY_NAME", library)
    failures = []
    for name in BINDINGS:
        try:
            return importlib.import_module(name)
        except (ImportError, OSError, AttributeError) as exc:  # missing module or libfuse
            failures.append(f"{name}: {exc}")
    raise FuseUnavailable(
        "no FUSE binding could be loaded ("
        + "; ".join(failures)
        + "): install libfuse (apt install fuse3) and mfusepy (pip install mfusepy)"
    )


def fuse_version(binding: ModuleType) -> tuple[int, int]:
    """The (major, minor) version of the libfuse the binding loaded (fusepy: 2.x)."""
    return (
        int(getattr(binding, "fuse_version_major", 2)),
        int(getattr(binding, "fuse_version_minor", 0)),
    )


def serve(
    operations: Any, mountpoint: str, options: FuseOptions, library: str | None = None
) -> None:
    """Mount ``operations`` at ``mountpoint`` and run until unmounted or signalled."""
    binding = load_binding(library)
    major, minor = fuse_version(binding)
    logger.info("serving %s with %s (libfuse %d.%d)", mountpoint, binding.__name__, major, minor)
    kwargs = options.as_kwargs()
    if binding.__name__ == "mfusepy" and major >= 3:
        # libfuse 3 wants max_read agreed in init() too; without it the kernel's own limit
        # (max_pages) applies, which libfuse 3 already raises to 1 MiB.
        kwargs.pop("max_readahead")
        kwargs.pop("max_read")
    try:
        with _default_stop_signals():
            fast_class(binding)(operations, mountpoint, **kwargs)
    except RuntimeError as exc:
        # libfuse 3's fuse_main returns 8 when its loop was ended by SIGINT/SIGTERM/SIGHUP,
        # after a clean unmount; codes 1-7 are failures to set up or mount.
        if exc.args != (LOOP_ENDED_BY_SIGNAL,) or major < 3:
            raise
        logger.info("%s: stopped by a signal and unmounted", mountpoint)


@contextlib.contextmanager
def _default_stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP at their defaults while libfuse runs: libfuse installs its own
    handlers (unmount cleanly, then return) only over default ones, and a Python-level
    handler never runs while the main thread is inside its loop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def fast_class(binding: ModuleType) -> type:
    """The binding's ``FUSE`` class with the zero-copy ``read`` and flag-setting ``open``."""
    base: type = binding.FUSE

    class FastFUSE(base):  # type: ignore[misc]
        def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
            ops = self.operations
            if size == 0:
                return 0
            address = ctypes.cast(buf, ctypes.c_void_p).value
            view = memoryview((ctypes.c_char * size).from_address(address or 0)).cast("B")
            name = None if path is None else path.decode(self.encoding, "surrogateescape")
            return int(ops.read_into(name, view, offset, fip.contents.fh))

        def open(self, path: bytes, fip: Any) -> int:
            ops, fi = self.operations, fip.contents
            fi.fh = ops.open(path.decode(self.encoding, "surrogateescape"), fi.flags)
            keep_cache, direct_io = ops.open_flags(fi.fh)
            fi.keep_cache = 1 if keep_cache else 0
            fi.direct_io = 1 if direct_io else 0
            return 0

    return FastFUSE

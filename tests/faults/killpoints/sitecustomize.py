"""Kill points for `tests/faults/killer.py`: phase markers in a real `vmaccel` process.

Not product code. `killer.py` puts this directory on PYTHONPATH of the `vmaccel` process it
starts, so Python imports this module at start-up, and names the functions to mark in
``VMACCEL_TEST_KILLPOINTS`` as ``module:Qualified.name=phase`` entries separated by commas.
When a named module is imported, each named function is wrapped to write one line
``@@killpoint enter <phase>`` to stderr (fd 2, one write: atomic on a pipe) on entry and
``@@killpoint leave <phase>`` on return or raise. Behaviour is otherwise unchanged; the
killer reads the lines and sends SIGKILL at the moment it aims for.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

ENV = "VMACCEL_TEST_KILLPOINTS"


def _marker(event: str, phase: str) -> None:
    os.write(2, f"@@killpoint {event} {phase}\n".encode())


def _marked(fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _marker("enter", phase)
        try:
            return fn(*args, **kwargs)
        finally:
            _marker("leave", phase)

    return wrapper


def _patch(module: ModuleType, targets: Sequence[tuple[str, str]]) -> None:
    for qualname, phase in targets:
        *outer, name = qualname.split(".")
        owner: Any = module
        for part in outer:
            owner = getattr(owner, part)
        setattr(owner, name, _marked(getattr(owner, name), phase))


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, targets: Sequence[tuple[str, str]]) -> None:
        self._inner, self._targets = inner, targets

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _patch(module, self._targets)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, targets: dict[str, list[tuple[str, str]]]) -> None:
        self._targets = targets

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in self._targets:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, self._targets[name])
        return spec


def _install(spec: str) -> None:
    targets: dict[str, list[tuple[str, str]]] = {}
    for entry in filter(None, spec.split(",")):
        where, phase = entry.split("=")
        module, qualname = where.split(":")
        targets.setdefault(module, []).append((qualname, phase))
    sys.meta_path.insert(0, _Finder(targets))


if os.environ.get(ENV):
    _install(os.environ[ENV])

"""The shape of the code: what import-linter cannot see, sizes, the exit-code table, packaging.

import-linter (`lint-imports`, run by scripts/test.sh) checks the layers and that only
`vmaccel.plugin.vcenter` imports the vSphere SDKs. These tests check the rest of
docs/architecture.md: the FUSE binding (loaded with importlib, invisible to import-linter),
module and function sizes (product, test bed, benches), every error's exit code in the one
table the README lists, and that `pip install .` installs exactly one top-level package.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import vmaccel
from vmaccel.vocabulary.errors import EXIT_CODES, VmaccelError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vmaccel"
FUSE_MODULES = {"mfusepy", "fuse"}
BINDING = PACKAGE / "fusemount" / "binding.py"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 50


def _modules(*roots: Path) -> Iterator[tuple[Path, ast.Module]]:
    for root in roots or (PACKAGE,):
        for path in sorted(root.rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _imported_names(tree: ast.Module) -> set[str]:
    """Top-level names of every import, and of every string handed to an import function."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                names.add(str(first.value).split(".")[0])
    return names


def test_only_the_binding_module_loads_the_fuse_library() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path, tree in _modules()
        if path != BINDING and _imported_names(tree) & FUSE_MODULES
    ]
    assert offenders == []
    binding = BINDING.read_text()
    assert re.search(r"import_module\(", binding), "the binding no longer loads by name"


def test_modules_and_functions_stay_small() -> None:
    """The product, the test bed and the benches (test scenarios may read longer)."""
    big, long = [], []
    for path, tree in _modules(PACKAGE, ROOT / "testbed", ROOT / "bench"):
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            big.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size}")
    assert (big, long) == ([], [])


def _all_error_classes() -> set[type[VmaccelError]]:
    for info in pkgutil.walk_packages(vmaccel.__path__, "vmaccel."):
        if ".cli" not in info.name:  # the CLI adds no error classes; its import is slow
            importlib.import_module(info.name)
    seen: set[type[VmaccelError]] = set()
    todo: list[type[VmaccelError]] = [VmaccelError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            todo.extend(cls.__subclasses__())
    return seen


def test_every_error_exits_with_a_code_of_the_table() -> None:
    unknown = {c.__qualname__: c.exit_code for c in _all_error_classes()}
    unknown = {name: code for name, code in unknown.items() if code not in EXIT_CODES}
    assert unknown == {}


def test_the_readme_lists_the_exit_code_table() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", readme, flags=re.MULTILINE))
    assert {int(code): text for code, text in rows.items()} == dict(EXIT_CODES)


def test_pip_install_holds_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("vmaccel-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vmaccel"}
    # the console's pages and assets ship with the package: no CDN, no build step at run time
    console = ROOT / "vmaccel" / "console"
    assets = [p for d in ("templates", "static") for p in (console / d).iterdir()]
    assert assets and {f"vmaccel/console/{p.parent.name}/{p.name}" for p in assets} <= names

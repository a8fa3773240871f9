"""requirements.lock against pyproject.toml, offline.

`scripts/lock.sh --check` (run by scripts/setup.sh, so by CI) re-resolves through the registry;
these tests catch the same mistakes without a network, plus the ones a resolver would not see:
a pin without hashes, a package pinned twice, an index or a path of some machine in the lock.
"""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _pyproject() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _stanzas() -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, hashes) of every package in requirements.lock."""
    stanzas: dict[str, tuple[Version, list[str]]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pin = PIN.match(line)
        if pin:
            name = canonicalize_name(pin.group(1))
            assert name not in stanzas, f"{name} pinned twice"
            stanzas[name] = (Version(pin.group(2)), [])
        elif line.strip().startswith("--hash="):
            stanzas[name][1].append(line.strip().removeprefix("--hash=").rstrip(" \\"))
    return stanzas


def _direct_requirements() -> list[Requirement]:
    """Runtime dependencies, the `dev` extra and the build backend, as in pyproject.toml."""
    data = _pyproject()
    project = data["project"]
    assert isinstance(project, dict)
    build = data["build-system"]
    assert isinstance(build, dict)
    specs = [*project["dependencies"], *project["optional-dependencies"]["dev"], *build["requires"]]
    return [Requirement(spec) for spec in specs]


def test_every_direct_requirement_is_pinned_within_its_range() -> None:
    stanzas = _stanzas()
    for req in _direct_requirements():
        name = canonicalize_name(req.name)
        assert name in stanzas, f"{req} is in pyproject.toml but not in requirements.lock"
        version, _ = stanzas[name]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} breaks {req}"


def test_every_pin_carries_sha256_hashes() -> None:
    for name, (_, hashes) in _stanzas().items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_lock_names_no_index_and_no_local_path() -> None:
    text = (ROOT / "requirements.lock").read_text()
    assert "://" not in text
    assert not re.search(r"^\s*-(-index-url|-extra-index-url|-find-links|i|f)\b", text, re.M)
    assert not re.search(r"(^|\s)/[a-z]", text), "an absolute path in requirements.lock"

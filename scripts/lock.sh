#!/usr/bin/env bash
# Writes requirements.lock: every package vmaccel, its `dev` extra and its build backend need,
# each pinned to one version with the hashes of its files, for every platform and Python >= 3.11.
#
#   bash scripts/lock.sh                       # after editing pyproject.toml: other pins stay put
#   bash scripts/lock.sh --upgrade             # every package to its newest release
#   bash scripts/lock.sh --upgrade-package X   # X (and what it needs) only; repeatable
#   bash scripts/lock.sh --check               # exit 1 if the lock disagrees with pyproject.toml
#
# The lock names no index: any mirror serving the same files installs it, the hashes decide.
# Needs the uv that scripts/setup.sh puts in .venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
uv="$here/.venv/bin/uv"
lock="$here/requirements.lock"
if [ ! -x "$uv" ]; then
  echo "lock: $uv is missing: run bash scripts/setup.sh first" >&2
  exit 1
fi

# The build backend (pyproject's build-system.requires) is locked too: setup.sh installs the
# project with --no-build-isolation, so no unpinned setuptools is fetched at install time.
build_requires() {
  "$here/.venv/bin/python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' \
    "$here/pyproject.toml"
}

# compile OUT [uv options]: resolves into OUT, keeping the pins OUT already holds.
compile() {
  local out="$1"
  shift
  (cd "$here" && build_requires | "$uv" pip compile --quiet pyproject.toml - --extra dev \
    --universal --generate-hashes --custom-compile-command "bash scripts/lock.sh" \
    --output-file "$out" "$@")
}

# The lock without its hashes: pins, markers and what needs each. Hashes are left out because
# a project may add wheels to a release it made long ago; the pins alone decide what installs.
pins() { grep -v -e '--hash=' "$1" | sed -e 's/ *\\$//'; }

if [ "${1:-}" = "--check" ]; then
  [ -f "$lock" ] || { echo "lock: requirements.lock is missing: run bash scripts/lock.sh" >&2; exit 1; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  cp "$lock" "$tmp/requirements.lock"
  if ! compile "$tmp/requirements.lock"; then
    echo "lock: pyproject.toml cannot be resolved (see above)" >&2
    exit 1
  fi
  if ! diff -u --label requirements.lock --label "resolved from pyproject.toml" \
      <(pins "$lock") <(pins "$tmp/requirements.lock") >&2; then
    echo "lock: requirements.lock does not match pyproject.toml: run bash scripts/lock.sh" \
      "and commit requirements.lock" >&2
    exit 1
  fi
  exit 0
fi
compile "$lock" "$@"
echo "lock: wrote requirements.lock ($(pins "$lock" | wc -l) packages)" >&2

#!/usr/bin/env bash
# The whole test suite: static checks, then pytest. Installs what it needs first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/setup.sh"
cd "$here"
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"; exec pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# The whole test suite: static checks, then pytest. Installs what it needs first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/setup.sh"
cd "$here"
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
# -rs lists every skip with its reason; --strict-skips fails a skip that CI's setup should have
# made runnable (the allowed reasons are in tests/skips.py).
echo "== pytest"; exec pytest -q -rs --strict-skips -p no:cacheprovider "$@"

#!/usr/bin/env bash
# The main job end to end on an embedded default: a simulated vCenter (vcsim test bed) with a
# real partitioned guest disk; back up by tag, change files as a guest would, back up again,
# mount the newest backup and read a changed file out of it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/setup.sh"
cd "$here"
exec env PYTHONPATH="$here" python scripts/demo.py "$@"

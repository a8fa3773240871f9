#!/usr/bin/env bash
# Installs what vmaccel and its tests need on Debian 12 (as root) and creates .venv.
# Idempotent: a second run only checks. Sourced by demo.sh and test.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

APT_PACKAGES=(
  python3 python3-venv python3-dev python3-libnbd gcc
  golang-go golang-github-vmware-govmomi-dev
  nbdkit libnbd-bin fuse3 libfuse2 qemu-utils
  e2fsprogs ntfs-3g xfsprogs dosfstools mtools gdisk fdisk lvm2 openssl
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  # Debian's interpreter, so that python3-libnbd (a system package) is importable in the venv.
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.installed-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -e "$here[dev]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"

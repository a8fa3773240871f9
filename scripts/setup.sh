#!/usr/bin/env bash
# Installs what vmaccel and its tests need on Debian 12 (as root) and creates .venv.
# Idempotent: a second run only checks. Sourced by demo.sh and test.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

APT_PACKAGES=(
  python3 python3-venv python3-dev python3-libnbd gcc
  # the compiled chunk codec (scripts/build_native.sh): zstd and zlib to link against
  libzstd-dev zlib1g-dev
  golang-go golang-github-vmware-govmomi-dev
  nbdkit libnbd-bin fuse3 libfuse2 qemu-utils
  e2fsprogs ntfs-3g xfsprogs dosfstools mtools gdisk fdisk lvm2 openssl
  # instant recovery: the userspace NFS server and the client the test bed reads it with
  nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils
  # boot-tested restore points: qemu, firmware, and what the bootable test disk is made of
  qemu-system-x86 ovmf busybox-static syslinux syslinux-common systemd-boot-efi binutils
  # the PostgreSQL catalog's tests (a throw-away cluster run as the postgres user) and the
  # console's browser tests
  postgresql-15 chromium
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
# Installs exactly requirements.lock (hash-checked), then vmaccel itself, editable. Keyed on
# both files: editing either makes the next run check the lock against pyproject.toml again.
inputs_hash="$(cat "$here/pyproject.toml" "$here/requirements.lock" | sha256sum | cut -c1-16)"
stamp="$venv/.installed-$inputs_hash"
if [ ! -f "$stamp" ]; then
  # uv, at the version and hashes the lock pins: installed by the venv's own pip the first
  # time, by the uv already there when the lock moves to another version.
  uv_pin="$(grep -E '^uv==' "$here/requirements.lock" | cut -d' ' -f1)"
  if [ "$("$venv/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "${uv_pin#uv==}" ]; then
    awk '/^uv==/ { on = 1 } on { print } on && !/\\$/ { exit }' "$here/requirements.lock" \
      >"$venv/uv-requirements.txt"
    installer=("$venv/bin/pip" install -q)
    [ -x "$venv/bin/uv" ] && installer=("$venv/bin/uv" pip install -q --python "$venv/bin/python")
    "${installer[@]}" --require-hashes --no-deps -r "$venv/uv-requirements.txt"
  fi
  bash "$here/scripts/lock.sh" --check
  "$venv/bin/uv" pip sync -q --python "$venv/bin/python" --require-hashes "$here/requirements.lock"
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps --no-build-isolation \
    -e "$here"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
# The compiled chunk codec (batches of zstd + BLAKE3 per GIL release); rebuilt when its sources
# change, a check otherwise.
bash "$here/scripts/build_native.sh"
# Bytecode ahead of time: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile
# every imported module again in every command (0.56 -> 0.26 s for `vmaccel --help` here).
# Fast when nothing changed (mtimes are compared).
"$venv/bin/python" -m compileall -q -j 0 "$venv/lib" "$here/vmaccel" >/dev/null 2>&1 || true
export PATH="$venv/bin:$PATH"

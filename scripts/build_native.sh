#!/usr/bin/env bash
# Builds vmaccel/catalog/_chunkcodec*.so, the chunk codec's batched hot path (see
# vmaccel/catalog/native/chunkcodec.c), with gcc against Debian's libzstd and the BLAKE3
# reference C implementation. Debian 12 packages no BLAKE3 C library, but it ships those C
# sources inside librust-blake3-dev: the package is downloaded at the pinned version (apt checks
# its signature) and only its c/ directory is used, nothing is installed.
# Keyed on the sources and flags: a second run only checks. Run by setup.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$here/.venv"
blake3_deb_version="1.3.1-1"
blake3_src="$venv/native/blake3-${blake3_deb_version}"
source_c="$here/vmaccel/catalog/native/chunkcodec.c"
suffix="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
target="$here/vmaccel/catalog/_chunkcodec$suffix"
cflags=(-O3 -fPIC -shared -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)

if [ ! -f "$blake3_src/blake3.h" ]; then
  work="$(mktemp -d)" && chmod 755 "$work"  # apt downloads as _apt where it can
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -qq "librust-blake3-dev=$blake3_deb_version" 2>/dev/null \
    || { apt-get update -qq && apt-get download -qq "librust-blake3-dev=$blake3_deb_version"; })
  dpkg-deb -x "$work"/librust-blake3-dev_*.deb "$work/x"
  mkdir -p "$(dirname "$blake3_src")"
  rm -rf "$blake3_src.tmp"
  cp -r "$work/x/usr/share/cargo/registry/blake3-1.3.1/c" "$blake3_src.tmp"
  mv "$blake3_src.tmp" "$blake3_src"
fi

b3=(blake3.c blake3_dispatch.c blake3_portable.c)
case "$(uname -m)" in
  x86_64) b3+=(blake3_sse2_x86-64_unix.S blake3_sse41_x86-64_unix.S
               blake3_avx2_x86-64_unix.S blake3_avx512_x86-64_unix.S) ;;
  *) cflags+=(-DBLAKE3_NO_SSE2 -DBLAKE3_NO_SSE41 -DBLAKE3_NO_AVX2 -DBLAKE3_NO_AVX512
              -DBLAKE3_USE_NEON=0) ;;  # portable C: only its sources are compiled
esac
key="$(cat "$source_c" "$blake3_src/blake3.h" | sha256sum | cut -c1-16) ${cflags[*]} $suffix"
stamp="$venv/native/chunkcodec.stamp"
if [ -f "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
  exit 0
fi
include="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
gcc "${cflags[@]}" -I"$include" -I"$blake3_src" -o "$target.tmp" "$source_c" \
  "${b3[@]/#/$blake3_src/}" -lzstd -lz
mv "$target.tmp" "$target"
echo "$key" >"$stamp"

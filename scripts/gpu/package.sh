#!/usr/bin/env bash
# Package the built binaries and the non-torch shared libraries they need for the GPU machine
# (which has torch 2.11.0+cu130 already; the device tool carries at most 64 MiB per call).
#   scripts/gpu/package.sh [build-dir] [out-dir]    -> out-dir/{bin,lib,run.sh}
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD=${1:-$ROOT/build}
OUT=${2:-$ROOT/gpu_bundle}
rm -rf "$OUT" && mkdir -p "$OUT/bin" "$OUT/lib"
for b in asl-cli asl-server engine_tests kv_tests; do
  [[ -x $BUILD/bin/$b ]] && cp "$BUILD/bin/$b" "$OUT/bin/" && strip --strip-debug "$OUT/bin/$b"
done
# Every resolved library except libtorch's own (torch/lib, nvidia/*) and the C runtime.
for b in "$OUT"/bin/*; do
  ldd "$b" | awk '/=> \// {print $3}'
done | sort -u | grep -v -E '/torch/lib/|/nvidia/|/libc\.so|/libm\.so|/libdl\.so|/libpthread\.so|/librt\.so|/ld-linux|/libgcc_s|/libstdc\+\+' \
  | while read -r lib; do cp -L "$lib" "$OUT/lib/"; done
cat > "$OUT/run.sh" <<'RUN'
#!/usr/bin/env bash
# On the GPU machine: put the machine's torch libraries and ours on the library path, then run.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TORCH_LIB=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$HERE/lib:$TORCH_LIB:${LD_LIBRARY_PATH:-}"
exec "$@"
RUN
chmod +x "$OUT/run.sh"
du -sh "$OUT"

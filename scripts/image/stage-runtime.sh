#!/usr/bin/env bash
# Lay out what a runtime image holds, from a build tree and the torch wheel's libraries:
#   scripts/image/stage-runtime.sh cpu|cuda BUILD_DIR SITE_PACKAGES OUT_DIR
# OUT_DIR/bin   asl-server, asl-gateway, asl-cli, asl-loadtest (debug info stripped)
# OUT_DIR/lib   cpu:  only what libtorch_cpu.so loads: libtorch_cpu, libc10, the wheel's libgomp, and
#                     libcudart + libcupti (the PyPI wheel's libtorch_cpu.so is linked against them:
#                     Kineto's CUPTI profiler; both load without a GPU). The binaries' NEEDED entries
#                     for libtorch.so / libtorch_cuda.so / libc10_cuda.so are removed (patchelf), so
#                     the 2.5 GB of CUDA libraries are not needed; --model.device=cuda is then refused.
#               cuda: the wheel's torch/lib and nvidia/ side by side, as in site-packages, so that the
#                     wheel's RPATH ($ORIGIN/../../nvidia/...) resolves unchanged.
# The Dockerfiles (docker/Dockerfile.cpu, docker/Dockerfile.cuda) run it in their build stage;
# scripts/image/build-and-run.sh and tests/deploy run it on the host.
set -euo pipefail
FLAVOUR=${1:?cpu|cuda}; BUILD=${2:?build dir}; SITE=${3:?site-packages}; OUT=${4:?out dir}
TORCH_LIB=$SITE/torch/lib
[[ -f $TORCH_LIB/libtorch_cpu.so ]] || { echo "stage-runtime: no libtorch_cpu.so in $TORCH_LIB" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT/bin" "$OUT/lib"
BINARIES=(asl-server asl-gateway asl-cli asl-loadtest)
for b in "${BINARIES[@]}"; do
  [[ -x $BUILD/bin/$b ]] || { echo "stage-runtime: $BUILD/bin/$b not built" >&2; exit 1; }
  cp "$BUILD/bin/$b" "$OUT/bin/$b"
  strip --strip-debug "$OUT/bin/$b"
done
case $FLAVOUR in
  cpu)
    for l in libtorch_cpu.so libc10.so libgomp.so.1; do cp "$TORCH_LIB/$l" "$OUT/lib/"; done
    # The wheel keeps full symbol tables (.symtab): 93 MB of libtorch_cpu.so that nothing loads.
    strip --strip-unneeded "$OUT/lib/libtorch_cpu.so" "$OUT/lib/libc10.so"
    for l in libcudart.so.13 libcupti.so.13; do
      f=$(find "$SITE/nvidia" -name "$l" | head -1)
      [[ -n $f ]] || { echo "stage-runtime: $l not found under $SITE/nvidia" >&2; exit 1; }
      cp "$f" "$OUT/lib/"
    done
    for b in "${BINARIES[@]}"; do
      args=()
      for n in libtorch.so libtorch_cuda.so libc10_cuda.so; do
        patchelf --print-needed "$OUT/bin/$b" | grep -qx "$n" && args+=(--remove-needed "$n")
      done
      ((${#args[@]})) && patchelf "${args[@]}" "$OUT/bin/$b"
      patchelf --set-rpath '$ORIGIN/../lib' "$OUT/bin/$b"
    done
    ;;
  cuda)
    mkdir -p "$OUT/lib/site/torch"
    cp -a "$TORCH_LIB" "$OUT/lib/site/torch/lib"
    rm -rf "$OUT/lib/site/torch/lib/libtorch_python.so" "$OUT/lib/site/torch/lib/libshm"* "$OUT/lib/site/torch/lib/libshm_windows"
    strip --strip-unneeded "$OUT"/lib/site/torch/lib/*.so
    cp -a "$SITE/nvidia" "$OUT/lib/site/nvidia"
    for b in "${BINARIES[@]}"; do patchelf --set-rpath '$ORIGIN/../lib/site/torch/lib' "$OUT/bin/$b"; done
    ;;
  *) echo "stage-runtime: flavour must be cpu or cuda" >&2; exit 2 ;;
esac
du -sh "$OUT/bin" "$OUT/lib"

#!/usr/bin/env bash
# Configure and build everything into build/ (binaries in build/bin/). Assumes scripts/setup.sh ran.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
# ccache: paths relative to the checkout, so a fresh clone on the same machine reuses the cache.
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=true
# Without the CUDA toolkit (no nvcc), the torch wheel's CMake config cannot define torch::cudart;
# cmake/torch-without-cuda-toolkit.cmake defines it from the wheel's own libcudart.
extra=()
if ! command -v nvcc >/dev/null && [[ ! -x ${CUDA_HOME:-/usr/local/cuda}/bin/nvcc ]]; then
  extra=(-DCMAKE_PROJECT_INCLUDE="$ROOT/cmake/torch-without-cuda-toolkit.cmake")
fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} "${extra[@]}" "$@"
cmake --build "$BUILD_DIR" -j "$JOBS"

#!/usr/bin/env bash
# Configure and build everything into build/ (binaries in build/bin/). Assumes scripts/setup.sh ran.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
# ccache: paths relative to the checkout, so a fresh clone on the same machine reuses the cache.
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=true
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} "$@"
cmake --build "$BUILD_DIR" -j "$JOBS"

#!/usr/bin/env bash
# Sanitizer and fuzz checks (issue 18; docs/testing.md). scripts/test.sh runs it after the normal
# build's tests. Builds tests/sanitize (the torch-free libraries and their suites, nothing else)
# with clang into its own build folders, then:
#   build-asan/  ASan+UBSan unit suites (label address) and each libFuzzer target for
#                ASL_FUZZ_SECONDS (default 60, libFuzzer seed ASL_FUZZ_SEED, default 1) over a copy of
#                tests/fuzz/corpus/<target> (label fuzz)
#   build-tsan/  TSan: the threaded unit suites, and asl-gateway's end-to-end suite with the
#                TSan gateway in front of the normal build's asl-server (label thread)
# Usage: scripts/sanitize.sh [asan] [tsan]   (default both). ASL_SKIP_SANITIZE=1 skips it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ ${ASL_SKIP_SANITIZE:-0} == 1 ]] && { echo "[sanitize] skipped (ASL_SKIP_SANITIZE=1)"; exit 0; }
JOBS=${JOBS:-$(nproc)}
FUZZ_SECONDS=${ASL_FUZZ_SECONDS:-60}
CC=${SAN_CC:-clang-14} CXX=${SAN_CXX:-clang++-14}
export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=true
modes=("$@"); ((${#modes[@]})) || modes=(asan tsan)

for mode in "${modes[@]}"; do
  case $mode in
    asan) san=address dir=build-asan labels="address|fuzz" extra=(-DASL_FUZZ_SECONDS="$FUZZ_SECONDS" -DASL_FUZZ_SEED="${ASL_FUZZ_SEED:-1}") ;;
    tsan) san=thread dir=build-tsan labels="thread" extra=(-DASL_NORMAL_BIN_DIR="$ROOT/${BUILD_DIR:-build}/bin") ;;
    *) echo "sanitize.sh: unknown mode $mode (asan, tsan)" >&2; exit 2 ;;
  esac
  start=$SECONDS
  echo "[sanitize] $mode: configure and build $dir/"
  CC=$CC CXX=$CXX cmake -S tests/sanitize -B "$dir" -G Ninja -DASL_SAN=$san "${extra[@]}" >/dev/null
  cmake --build "$dir" -j "$JOBS"
  built=$SECONDS
  (cd "$dir" && ctest --output-on-failure -j "$JOBS" -L "$labels")
  echo "[sanitize] $mode: build $((built - start)) s, tests $((SECONDS - built)) s"
done

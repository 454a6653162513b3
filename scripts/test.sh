#!/usr/bin/env bash
# The README's test command: sets everything up on a fresh machine (Debian packages, .venv,
# default model), builds, and runs every test suite through ctest.
#   scripts/test.sh            all tests
#   scripts/test.sh -L unit    only the fast unit tests (any ctest arguments pass through)
# With no arguments (CI: .ci/run) it then runs scripts/sanitize.sh: ASan+UBSan and TSan builds of
# the torch-free libraries and their suites, the TSan gateway end to end, and each libFuzzer target
# for ASL_FUZZ_SECONDS (docs/testing.md). ASL_SKIP_SANITIZE=1 skips that; ASL_SANITIZE=1 runs it
# after a ctest with arguments too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
scripts/build.sh
(cd build && ctest --output-on-failure --timeout 1800 "$@")
if (($# == 0)) || [[ ${ASL_SANITIZE:-0} == 1 ]]; then
  scripts/sanitize.sh
fi

#!/usr/bin/env bash
# The README's test command: sets everything up on a fresh machine (Debian packages, .venv,
# default model), builds, and runs every test suite through ctest.
#   scripts/test.sh            all tests
#   scripts/test.sh -L unit    only the fast unit tests (any ctest arguments pass through)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
scripts/build.sh
cd build
ctest --output-on-failure --timeout 1800 "$@"

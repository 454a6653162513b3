#!/usr/bin/env bash
# The README's main job: sets everything up on a fresh machine and starts asl-server on the
# default model (gRPC on :50051, Prometheus /metrics on :9090). Extra arguments go to asl-server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
scripts/build.sh
exec build/bin/asl-server "$@"

#!/usr/bin/env bash
# The README's main job: sets everything up on a fresh machine and starts asl-server on the
# default model (gRPC on 127.0.0.1:50051, Prometheus /metrics on 127.0.0.1:9090; pass
# --server.host=0.0.0.0 to serve other machines). Extra arguments go to asl-server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh
scripts/build.sh
exec build/bin/asl-server "$@"

#!/usr/bin/env bash
# Build the images from their Dockerfiles with podman on a Debian bookworm base made here by
# mmdebstrap (no container registry is needed), then run them and answer real requests:
#   scripts/image/build-and-run.sh [cpu|cuda|all]        (default: cpu; as root)
#   ASL_IMAGE_SKIP_BUILD=1 scripts/image/build-and-run.sh cpu   (the checks only, on a built image)
# For each image: the server container started with Kubernetes-style args (which replace CMD), the
# gateway container (same image, --entrypoint asl-gateway) in front of it, GET /health, one chat
# completion, a /metrics scrape, the image's defaults alone with its HEALTHCHECK, the user it runs as, ldd inside the image
# (no library missing), SIGTERM -> exit 0, and the image's size. Prints a summary to paste in
# docs/deploy.md. The cuda image runs on the CPU here (the CUDA libraries load; no GPU is used).
#
# Sandbox settings, all on the command line so the Dockerfiles stay plain: runc with cgroupfs
# (this host has hybrid cgroups, which crun refuses), rlimits no higher than the host's, host
# networking, the host's CA bundle added to RUN steps' trust store (ca-certificates' postinst picks
# up /usr/local/share/ca-certificates; for pip behind an intercepting proxy),
# and the host's ccache as CCACHE_DIR (RUN --mount=type=cache is kept for BuildKit users).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
WHICH=${1:-cpu}
WORK=${ASL_IMAGE_WORK:-/var/tmp/asl-image}
BASE_TAG=localhost/asl-base:bookworm
PY=${PYTHON:-$ROOT/.venv/bin/python}
mkdir -p "$WORK"
log() { echo "[image] $*"; }

need=()
for t in podman mmdebstrap runc curl; do command -v $t >/dev/null || need+=("$t"); done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" uidmap
fi
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
# podman wants systemd for its periodic healthcheck timers and says so on every run; there is no
# systemd here, and `podman healthcheck run` works without it, so those lines are dropped.
pm() { "${PODMAN[@]}" "$@" 2> >(grep -v -E 'systemd connection|Removing timer' >&2); }
NOFILE=$(ulimit -Hn); NPROC=$(( $(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768 ))
LIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")

# 1. The base: Debian bookworm's essential packages + apt (what debian:bookworm-slim holds, near
#    enough) with the slim image's path exclusions, from the Debian mirror.
if ! pm image exists "$BASE_TAG"; then
  log "mmdebstrap bookworm (essential + apt) -> $BASE_TAG"
  mmdebstrap --variant=apt --mode=root \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm "$WORK/bookworm.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  pm import --change 'CMD ["/bin/bash"]' "$WORK/bookworm.tar" "$BASE_TAG"
  rm -f "$WORK/bookworm.tar"
fi

CCACHE_HOST=$(ccache -k cache_dir 2>/dev/null || echo "$HOME/.cache/ccache"); mkdir -p "$CCACHE_HOST"
CA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}

build() {  # flavour
  local f=$1
  log "podman build docker/Dockerfile.$f -> localhost/asl-serve:$f"
  local t0=$SECONDS
  # --format docker: an OCI image has no HEALTHCHECK field (podman drops it with a warning).
  "${PODMAN[@]}" build --format docker --network host "${LIMITS[@]}" \
    --build-arg BASE="$BASE_TAG" --build-arg CCACHE_DIR=/ccache-host \
    --build-arg ASL_GIT_SHA="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" \
    -v "$CCACHE_HOST:/ccache-host" -v "$CA:/usr/local/share/ca-certificates/host-ca.crt:ro" \
    -f "docker/Dockerfile.$f" -t "localhost/asl-serve:$f" . 2>&1 | tee "$WORK/build-$f.log" | awk '/STEP [0-9]+\/[0-9]+:|^COMMIT/'  \
    || { log "build failed, see $WORK/build-$f.log"; exit 1; }
  log "built in $((SECONDS - t0)) s"
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_checks() {  # flavour
  local f=$1 img=localhost/asl-serve:$1
  local gp mp hp; gp=$(free_port); mp=$(free_port); hp=$(free_port)
  local srv=asl-proof-server-$f gw=asl-proof-gateway-$f
  pm rm -f "$srv" "$gw" >/dev/null 2>&1 || true
  log "$f: size $(pm image inspect --format '{{.Size}}' "$img" | awk '{printf "%.0f MB", $1/1e6}')"
  log "$f: entrypoint $(pm image inspect --format '{{json .Config.Entrypoint}} cmd {{json .Config.Cmd}} user {{.Config.User}}' "$img")"
  log "$f: libraries missing inside the image (ldd):"
  pm run --rm "${LIMITS[@]}" --entrypoint bash "$img" -c \
    'for b in /app/bin/*; do ldd $b | grep "not found" | sed "s|^|  $b: |"; done; echo "  (end)"'
  # Kubernetes-style args: they replace CMD (one --config, device cpu for the cuda image here).
  pm run -d --name "$srv" --network host "${LIMITS[@]}" "$img" \
    --config /app/config/default.yaml --server.host=127.0.0.1 --server.grpc_port="$gp" \
    --server.metrics_port="$mp" --kv_cache.bytes=64MiB --model.device=cpu >/dev/null
  pm run -d --name "$gw" --network host "${LIMITS[@]}" --entrypoint /app/bin/asl-gateway "$img" \
    --listen "127.0.0.1:$hp" --backend "127.0.0.1:$gp" >/dev/null
  log "$f: runs as uid $(pm exec "$srv" id -u)"
  local t0=$SECONDS ok=0
  while ((SECONDS - t0 < 300)); do
    if curl -fsS "http://127.0.0.1:$hp/health" >/dev/null 2>&1; then ok=1; break; fi
    pm container inspect -f '{{.State.Running}}' "$srv" | grep -q true || break
    sleep 1
  done
  if ((ok == 0)); then pm logs "$srv" | tail -20; log "$f: server never SERVING"; exit 1; fi
  log "$f: gateway /health 200 after $((SECONDS - t0)) s"
  local body
  local model
  model=$(curl -fsS "http://127.0.0.1:$hp/v1/models" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
  log "$f: /v1/models: $model"
  body=$(curl -fsS "http://127.0.0.1:$hp/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"Name three primary colours.\"}],\"max_tokens\":16,\"temperature\":0}")
  echo "$body" | "$PY" -c 'import json,sys; r=json.load(sys.stdin); c=r["choices"][0]; assert r["usage"]["completion_tokens"]>0, r; print("[image]   chat completion:", repr(c["message"]["content"]), c["finish_reason"], r["usage"])'
  local scrape; scrape=$(curl -fsS "http://127.0.0.1:$mp/metrics")
  log "$f: /metrics: $(echo "$scrape" | grep -c '^asl_') asl_ samples; $(echo "$scrape" | grep -E '^asl_generation_tokens_total')"
  # The image's defaults alone (CMD, ports 50051/9090) in a network namespace of its own, and its
  # HEALTHCHECK, which probes 127.0.0.1:9090.
  local def=asl-proof-default-$f ok_hc=0
  pm rm -f "$def" >/dev/null 2>&1 || true
  local defargs=()  # the cuda image's CMD asks for a GPU: the same CMD with the CPU here
  [[ $f == cuda ]] && defargs=(--config /app/config/default.yaml --server.host=0.0.0.0 --model.device=cpu)
  pm run -d --name "$def" --network none "${LIMITS[@]}" "$img" "${defargs[@]}" >/dev/null
  for _ in $(seq 60); do
    if pm healthcheck run "$def" >/dev/null 2>&1; then ok_hc=1; break; fi
    sleep 1
  done
  pm logs "$def" 2>&1 | grep -m1 -E 'serving .* after' | sed 's/^/[image]   default CMD: /' || true
  pm rm -f "$def" >/dev/null
  if ((ok_hc)); then log "$f: HEALTHCHECK healthy (image defaults, no args)"; else log "$f: HEALTHCHECK failed"; exit 1; fi
  pm logs "$srv" 2>&1 | grep -m1 -E 'serving .* after' | sed 's/^/[image]   server log: /' || true
  pm stop -t 60 "$gw" >/dev/null; pm stop -t 60 "$srv" >/dev/null
  log "$f: after SIGTERM: server exit $(pm container inspect -f '{{.State.ExitCode}}' "$srv"), gateway exit $(pm container inspect -f '{{.State.ExitCode}}' "$gw")"
  pm rm -f "$srv" "$gw" >/dev/null
}

flavours=(); case $WHICH in cpu|cuda) flavours=("$WHICH") ;; all) flavours=(cpu cuda) ;; *) echo "usage: $0 [cpu|cuda|all]" >&2; exit 2 ;; esac
# ASL_IMAGE_SKIP_BUILD=1: only the checks, on images built before.
[[ ${ASL_IMAGE_SKIP_BUILD:-0} == 1 ]] || for f in "${flavours[@]}"; do build "$f"; done
for f in "${flavours[@]}"; do run_checks "$f"; done
log "done"

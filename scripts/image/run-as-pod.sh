#!/usr/bin/env bash
# Run a built image the way deploy/kustomize/overlays/cpu runs it in a pod, on this machine:
#   scripts/image/run-as-pod.sh [IMAGE]          (default localhost/asl-serve:cpu; as root, after
#                                                 scripts/image/build-and-run.sh cpu)
# From the rendered manifests (kubectl kustomize): the model-seed init container's command fills
# an empty model volume (owned by the pod's fsGroup), then the server container with the pod's
# args and its ConfigMap's server.yaml mounted at /etc/asl, the model volume read-only, and the
# pod's securityContext (uid/gid 65532, read-only root filesystem, all capabilities dropped,
# no-new-privileges, /tmp writable); the gateway container with its command and args in the
# server's network namespace (as containers of one pod share it), so --backend 127.0.0.1:50051
# reaches the server. Checks from inside that namespace (nsenter -n): the probes' endpoints (gRPC
# health SERVING, /metrics, the gateway's /health), a chat completion, then SIGTERM -> exit 0.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
IMG=${1:-localhost/asl-serve:cpu}
WORK=${ASL_IMAGE_WORK:-/var/tmp/asl-image}/pod
PY=$ROOT/.venv/bin/python
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
# podman wants systemd for its periodic healthcheck timers and says so on every run; there is no
# systemd here, and `podman healthcheck run` works without it, so those lines are dropped.
pm() { "${PODMAN[@]}" "$@" 2> >(grep -v -E 'systemd connection|Removing timer' >&2); }
NOFILE=$(ulimit -Hn); NPROC=$(( $(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768 ))
LIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")
log() { echo "[pod] $*"; }
rm -rf "$WORK" && mkdir -p "$WORK/etc-asl" "$WORK/models"

"$ROOT/.venv/bin/kubectl" kustomize deploy/kustomize/overlays/cpu > "$WORK/rendered.yaml"
"$PY" - "$WORK" <<'PYEOF'
import json, sys, yaml
work = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(f"{work}/rendered.yaml")) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
spec = dep["spec"]["template"]["spec"]
cm = next(d for d in docs if d["kind"] == "ConfigMap")
open(f"{work}/etc-asl/server.yaml", "w").write(cm["data"]["server.yaml"])
cs = {c["name"]: c for c in spec["containers"]}
seed = spec["initContainers"][0]
out = {"seed": seed["command"], "server_args": cs["server"]["args"], "gateway_cmd": cs["gateway"]["command"] + cs["gateway"]["args"],
       "uid": spec["securityContext"]["runAsUser"], "gid": spec["securityContext"]["runAsGroup"], "fsgroup": spec["securityContext"]["fsGroup"]}
json.dump(out, open(f"{work}/pod.json", "w"))
PYEOF
get() { "$PY" -c "import json,sys; v=json.load(open('$WORK/pod.json'))['$1']; print('\n'.join(map(str,v)) if isinstance(v,list) else v)"; }
mapfile -t SEED < <(get seed); mapfile -t SARGS < <(get server_args); mapfile -t GCMD < <(get gateway_cmd)
UID_=$(get uid); GID_=$(get gid); FSG=$(get fsgroup)
chown "$UID_:$FSG" "$WORK/models"
SEC=(--user "$UID_:$GID_" --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges "${LIMITS[@]}")

log "init container model-seed: ${SEED[*]}"
pm run --rm "${SEC[@]}" -v "$WORK/models:/models" --entrypoint "${SEED[0]}" "$IMG" "${SEED[@]:1}"
ls -l "$WORK/models" | tail -n +2 | sed 's/^/[pod]   /'

pm rm -f asl-pod-gateway >/dev/null 2>&1 || true; pm rm -f asl-pod-server >/dev/null 2>&1 || true
log "server: asl-server ${SARGS[*]}"
pm run -d --name asl-pod-server --network none "${SEC[@]}" \
  -v "$WORK/etc-asl:/etc/asl:ro" -v "$WORK/models:/models:ro" "$IMG" "${SARGS[@]}" >/dev/null
log "gateway: ${GCMD[*]}"
pm run -d --name asl-pod-gateway --network container:asl-pod-server "${SEC[@]}" \
  --entrypoint "${GCMD[0]}" "$IMG" "${GCMD[@]:1}" >/dev/null
PID=$(pm inspect -f '{{.State.Pid}}' asl-pod-server)
in_pod() { nsenter -t "$PID" -n "$@"; }

t0=$SECONDS
until in_pod "$PY" - <<'PYEOF' 2>/dev/null
import grpc, sys
from grpc_health.v1 import health_pb2, health_pb2_grpc
ch = grpc.insecure_channel("127.0.0.1:50051")
r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
sys.exit(0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1)
PYEOF
do
  ((SECONDS - t0 < 300)) || { pm logs asl-pod-server | tail; log "not SERVING after 300 s"; exit 1; }
  pm container inspect -f '{{.State.Running}}' asl-pod-server | grep -q true || { pm logs asl-pod-server | tail; exit 1; }
  sleep 1
done
log "startup/readiness probe (gRPC health on :50051): SERVING after $((SECONDS - t0)) s"
log "liveness probe (GET :9090/metrics): HTTP $(in_pod curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/metrics)"
until in_pod curl -fsS -o /dev/null http://127.0.0.1:8080/health 2>/dev/null; do ((SECONDS - t0 < 60)) || exit 1; sleep 1; done
log "gateway readiness probe (GET :8080/health): HTTP 200"
MODEL=$(in_pod curl -fsS http://127.0.0.1:8080/v1/models | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
in_pod curl -fsS http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
  -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Name three primary colours.\"}],\"max_tokens\":16,\"temperature\":0}" \
  | "$PY" -c 'import json,sys; r=json.load(sys.stdin); assert r["usage"]["completion_tokens"] > 0, r; print("[pod]   chat completion through the gateway:", repr(r["choices"][0]["message"]["content"]), r["usage"])'
pm logs asl-pod-server 2>&1 | grep -m1 -E 'serving .* after' | sed 's/^/[pod]   server log: /' || true
pm stop -t 60 asl-pod-gateway >/dev/null; pm stop -t 60 asl-pod-server >/dev/null
log "SIGTERM: server exit $(pm container inspect -f '{{.State.ExitCode}}' asl-pod-server), gateway exit $(pm container inspect -f '{{.State.ExitCode}}' asl-pod-gateway)"
pm rm -f asl-pod-gateway >/dev/null; pm rm -f asl-pod-server >/dev/null
log "done"

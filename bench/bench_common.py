"""What the OpenAI-API benchmarks share: the gateway suite's stack launcher (asl-server +
asl-gateway on free ports), llama.cpp's llama-server started on the same model and threads, and
the header every bench/results file starts with (date, commit, machine, command)."""
import contextlib
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gateway"))
os.environ.setdefault("ASL_BIN_DIR", str(ROOT / "build" / "bin"))
os.environ.setdefault("ASL_DEFAULT_MODEL", str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
import conftest  # noqa: E402,F401  (re-exported: conftest.start_stack, conftest.free_port)

MODEL = os.environ["ASL_DEFAULT_MODEL"]
LLAMA_SERVER = str(ROOT / "bench" / "out" / "llama.cpp" / "build" / "bin" / "llama-server")


def wait_health(url, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} never became healthy")


@contextlib.contextmanager
def llama_server(binary, threads, parallel, context, log_dir):
    """llama-server on the default model -> (base URL, version string); stopped on exit."""
    port = conftest.free_port()
    cmd = [binary, "-m", MODEL, "-t", str(threads), "-tb", str(threads), "--host", "127.0.0.1", "--port", str(port),
           "--parallel", str(parallel), "-c", str(context), "--no-webui"]
    with open(Path(log_dir) / "llama-server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_health(f"http://127.0.0.1:{port}/health")
            v = subprocess.run([binary, "--version"], capture_output=True, text=True)
            yield f"http://127.0.0.1:{port}", " ".join((v.stdout + v.stderr).split())[:120]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def results_header(script, what):
    """The first lines of a bench/results file: when, which commit, which machine, what was run."""
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (f"Date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {sha}, "
            f"{platform.machine()}, {os.cpu_count()} vCPU (shared), {what}.\n\n"
            f"Command: `.venv/bin/python bench/{script} {shlex.join(sys.argv[1:])}`\n\n")

"""Fixtures for the asl-server integration suite: Python stubs generated from proto/ into a temp
dir, free ports, and a real asl-server process on the default model.

Environment (set by ctest; defaults work from a source checkout with build-server/):
  ASL_BIN_DIR        directory holding asl-server
  ASL_DEFAULT_MODEL  model file to serve
  ASL_PROTO_DIR      root of the .proto files
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("ASL_BIN_DIR", ROOT / "build-server" / "bin"))
MODEL = os.environ.get("ASL_DEFAULT_MODEL", str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
PROTO_DIR = Path(os.environ.get("ASL_PROTO_DIR", ROOT / "proto"))

# Reconnect fast so that a client started before the server listens sees it within ~100 ms.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]


def _generate_stubs():
    from grpc_tools import protoc
    import grpc_tools

    out = Path(tempfile.mkdtemp(prefix="asl_stubs_"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
        str(PROTO_DIR / "asl" / "v1" / "generation.proto"),
    ])
    assert rc == 0, "grpc_tools.protoc failed on generation.proto"
    sys.path.insert(0, str(out))
    from asl.v1 import generation_pb2, generation_pb2_grpc  # noqa: E402
    return generation_pb2, generation_pb2_grpc


pb, pb_grpc = _generate_stubs()
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One asl-server process. Its log goes to a file under tmp_dir (printed on failure)."""

    def __init__(self, tmp_dir, *extra_args):
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.log_path = Path(tmp_dir) / f"asl-server-{self.grpc_port}.log"
        args = [
            str(BIN_DIR / "asl-server"),
            f"--model.path={MODEL}",
            "--server.host=127.0.0.1",
            f"--server.grpc_port={self.grpc_port}",
            f"--server.metrics_port={self.metrics_port}",
            "--kv_cache.bytes=32MiB",  # 2730 blocks of float16 KV (the default dtype)
            *extra_args,
        ]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self.signalled = False
        self.address = f"127.0.0.1:{self.grpc_port}"
        self.channel = grpc.insecure_channel(self.address, options=FAST_RECONNECT)
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def log(self):
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def health_status(self, service=""):
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
        except grpc.RpcError:
            return None

    def wait_serving(self, timeout=180):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"asl-server exited with {self.proc.returncode}:\n{self.log()}")
            if self.health_status() == health_pb2.HealthCheckResponse.SERVING:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"asl-server not SERVING after {timeout}s:\n{self.log()}")

    def metrics_text(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def signal(self, sig=signal.SIGTERM):
        self.signalled = True
        self.proc.send_signal(sig)

    def stop(self, timeout=60):
        """SIGTERM (unless a test already sent one: a second signal means "exit now", status 1),
        wait, and return the exit status."""
        if self.proc.poll() is None and not self.signalled:
            self.proc.send_signal(signal.SIGTERM)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.channel.close()
        self._log.close()
        return self.proc.returncode


def start_server(tmp_dir, *extra_args, wait=True):
    server = Server(tmp_dir, *extra_args)
    return server.wait_serving() if wait else server


# The suite's shared server. max_prompt_tokens 2500 lets a 2000-token prompt through validation so
# that it reaches the pool check (32 MiB = 2730 blocks < 30 layers x 125 blocks).
SHARED_ARGS = ("--server.max_prompt_tokens=2500", "--scheduler.max_num_seqs=64")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("server"), *SHARED_ARGS)
    yield s
    rc = s.stop()
    assert rc == 0, f"asl-server exited with {rc}:\n{s.log()}"


@pytest.fixture
def fresh_server_dir(tmp_path):
    return tmp_path

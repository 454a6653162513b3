"""Fixtures for the gateway suite: a real asl-server (small KV pool, free ports) and a real
asl-gateway in front of it, both started once per module.

Environment (set by ctest; the defaults work from a source checkout):
  ASL_BIN_DIR        directory holding asl-gateway and asl-loadtest (and asl-server)
  ASL_SERVER_BIN     asl-server to use (default: ASL_BIN_DIR/asl-server, else build-server/bin)
  ASL_DEFAULT_MODEL  model file to serve
"""
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("ASL_BIN_DIR", ROOT / "build-gw" / "bin"))
MODEL = os.environ.get("ASL_DEFAULT_MODEL", str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def _server_bin():
    if os.environ.get("ASL_SERVER_BIN"):
        return Path(os.environ["ASL_SERVER_BIN"])
    for candidate in (BIN_DIR / "asl-server", ROOT / "build-server" / "bin" / "asl-server"):
        if candidate.is_file() and os.access(candidate, os.X_OK) and candidate.stat().st_size > 0:
            return candidate
    return BIN_DIR / "asl-server"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process whose output goes to a log file (shown when a fixture fails); `env` adds to
    the environment. Also the security suite's process helper (tests/security/test_security.py)."""

    def __init__(self, name, args, log_dir, env=None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(a) for a in args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def log(self):
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def start_stack(log_dir, *server_args, gateway_threads=16, server_env=None):
    """asl-server (with server_args last, server_env added to its environment) + asl-gateway
    (gateway_threads HTTP workers: all but clamp(threads/8, 1, 16) of them serve generations).
    Yields an object with .base_url, .grpc_address, .metrics()."""
    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    server = Process("asl-server", [
        str(_server_bin()),
        f"--model.path={MODEL}",
        "--server.host=127.0.0.1",
        f"--server.grpc_port={grpc_port}",
        f"--server.metrics_port={metrics_port}",
        "--kv_cache.bytes=128MiB",
        *server_args,
    ], log_dir, env=server_env)
    gateway = Process("asl-gateway", [
        str(BIN_DIR / "asl-gateway"),
        f"--listen=127.0.0.1:{http_port}",
        f"--backend=127.0.0.1:{grpc_port}",
        f"--threads={gateway_threads}",
    ], log_dir)

    class Stack:
        base_url = f"http://127.0.0.1:{http_port}"
        grpc_address = f"127.0.0.1:{grpc_port}"
        processes = {"asl-server": server, "asl-gateway": gateway}

        @staticmethod
        def metrics():
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
                return r.read().decode()

        @staticmethod
        def metric(name):
            for line in Stack.metrics().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
            raise KeyError(name)

        @staticmethod
        def logs():
            return server.log() + "\n----- gateway -----\n" + gateway.log()

    try:
        deadline = time.time() + 180
        while True:  # /health is 200 once the backend's gRPC health is SERVING
            server.check_alive()
            gateway.check_alive()
            try:
                if requests.get(Stack.base_url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError("stack not healthy after 180 s:\n" + Stack.logs())
            time.sleep(0.1)
        yield Stack
    finally:
        gateway.stop()
        server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The suite's shared stack."""
    with start_stack(tmp_path_factory.mktemp("gateway")) as s:
        yield s


@pytest.fixture(scope="module")
def client(stack):
    import openai
    # No retries: a test must see the first answer, errors included.
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


@pytest.fixture
def one_seat_stack(tmp_path):
    """A stack whose engine runs one request and queues one more: the next one is refused."""
    with start_stack(tmp_path, "--scheduler.max_num_seqs=1", "--scheduler.max_waiting=1") as s:
        yield s

"""What the README's "Scale-out" tells gRPC clients to do, against real servers: two asl-server
replicas behind one name that resolves to both addresses (what a headless Service's DNS name
does), reached with the dns resolver. With gRPC's default pick_first policy every call goes to
one replica; with round_robin both replicas serve. The name comes from an /etc/hosts bind-mounted
in a private mount namespace of the client (unshare -m, root only), so nothing on the machine
changes."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("ASL_BIN_DIR", ROOT / "build" / "bin"))
MODEL = os.environ.get("ASL_DEFAULT_MODEL", str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
ADDRESSES = ["127.0.0.2", "127.0.0.3"]
NAME = "asl-serve-headless"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare for a private /etc/hosts")


def common_free_port():
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ADDRESSES[0], 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind((ADDRESSES[1], port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on both addresses")


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def requests_served(host, port):
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r"^asl_requests_total\{[^}]*\} (\S+)$", text, re.M))


CLIENT = textwrap.dedent("""
    import sys, importlib.util
    import grpc
    spec = importlib.util.spec_from_file_location("conftest", sys.argv[1])
    c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
    target, policy, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    options = [] if policy == "pick_first" else [
        ("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}')]
    channel = grpc.insecure_channel(target, options=options)
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = c.pb_grpc.GenerationStub(channel)
    for i in range(n):
        req = c.pb.GenerateRequest(prompt=f"Hello {i}", sampling=c.pb.SamplingParams(max_tokens=1))
        list(stub.Generate(req, timeout=60))
    channel.close()
""")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("balancing")
    grpc_port = common_free_port()
    procs = []
    for host in ADDRESSES:
        metrics_port = free_port(host)
        log = open(tmp / f"server-{host}.log", "w")
        p = subprocess.Popen([str(BIN_DIR / "asl-server"), f"--model.path={MODEL}", f"--server.host={host}",
                              f"--server.grpc_port={grpc_port}", f"--server.metrics_port={metrics_port}",
                              "--kv_cache.bytes=32MiB"], stdout=log, stderr=subprocess.STDOUT)
        procs.append((host, metrics_port, p, log))
    deadline = time.time() + 180
    for host, metrics_port, p, log in procs:
        while True:
            assert p.poll() is None, f"asl-server on {host} exited: {(tmp / f'server-{host}.log').read_text()}"
            if "health SERVING" in (tmp / f"server-{host}.log").read_text():
                break
            assert time.time() < deadline, f"asl-server on {host} not SERVING"
            time.sleep(0.1)
    hosts = tmp / "hosts"
    hosts.write_text("".join(f"{a} {NAME}\n" for a in ADDRESSES))
    client = tmp / "client.py"
    client.write_text(CLIENT)
    yield {"port": grpc_port, "procs": procs, "hosts": hosts, "client": client}
    for host, _, p, log in procs:
        p.send_signal(signal.SIGTERM)
    for host, _, p, log in procs:
        assert p.wait(timeout=60) == 0, f"asl-server on {host} did not exit cleanly"
        log.close()


def served_by(replicas, policy, n):
    before = [requests_served(h, m) for h, m, _, _ in replicas["procs"]]
    cmd = (f"mount --bind {replicas['hosts']} /etc/hosts && exec {sys.executable} {replicas['client']} "
           f"{ROOT / 'tests' / 'server' / 'conftest.py'} dns:///{NAME}:{replicas['port']} {policy} {n}")
    # c-ares (grpcio's default resolver) returns every address of a name in /etc/hosts; glibc's
    # getaddrinfo returns only the first one there ("multi off"). Real DNS returns all to both.
    env = dict(os.environ, ASL_PROTO_DIR=str(ROOT / "proto"), GRPC_DNS_RESOLVER="ares")
    r = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return [requests_served(h, m) - b for (h, m, _, _), b in zip(replicas["procs"], before)]


def test_pick_first_sends_everything_to_one_replica(replicas):
    counts = served_by(replicas, "pick_first", 6)
    assert sorted(counts) == [0, 6], counts


def test_round_robin_spreads_calls_over_the_replicas(replicas):
    counts = served_by(replicas, "round_robin", 8)
    assert sum(counts) == 8 and all(c > 0 for c in counts), counts

"""Security and lifecycle of both faces, end to end on the real binaries and the default model:
API keys (missing / wrong / right) on asl-server (gRPC metadata) and asl-gateway (the official
`openai` client), TLS with certificates made by `openssl` here (gRPC, HTTPS, the gateway's backend
channel, mutual TLS), CORS preflight, environment variables setting flags, --version on every
binary, files that cannot be read (exit 2 naming them), and the gateway's drain on SIGTERM with a
live SSE stream.

Environment (set by ctest): ASL_BIN_DIR, ASL_DEFAULT_MODEL, ASL_PROTO_DIR.
"""
import contextlib
import importlib.util
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

import grpc
import openai
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
# The gRPC suite's helpers (stubs generated from proto/, the Server process), loaded under their
# own name so as not to clash with any other conftest.
_spec = importlib.util.spec_from_file_location("server_conftest", ROOT / "tests" / "server" / "conftest.py")
sc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sc)
pb, pb_grpc, health_pb2, health_pb2_grpc = sc.pb, sc.pb_grpc, sc.health_pb2, sc.health_pb2_grpc
BIN_DIR, MODEL, free_port = sc.BIN_DIR, sc.MODEL, sc.free_port

KEYS = ["sk-file-one", "sk-file-two"]
ENV_KEY = "sk-from-env"
GW_KEY = "sk-gateway"
GW_ENV_KEY = "sk-gateway-env"
CHAT = [{"role": "user", "content": "Name three colours."}]


def run(args, env=None, timeout=60):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# The gateway suite's process helper (a child with its output in a log file), loaded the same way.
_gspec = importlib.util.spec_from_file_location("gateway_conftest", ROOT / "tests" / "gateway" / "conftest.py")
_gc = importlib.util.module_from_spec(_gspec)
_gspec.loader.exec_module(_gc)
Proc = _gc.Process


def start_server(log_dir, *args, env=None):
    port, metrics = free_port(), free_port()
    p = Proc(f"asl-server-{port}", [BIN_DIR / "asl-server", f"--model.path={MODEL}",
                                    f"--server.grpc_port={port}", f"--server.metrics_port={metrics}",
                                    "--kv_cache.bytes=64MiB", *args], log_dir, env)
    p.port = port
    p.address = f"127.0.0.1:{port}"
    return p


def wait_health(channel, proc, timeout=180):
    """gRPC health SERVING, asked without any key (the health service stays open)."""
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.time() + timeout
    while True:
        assert proc.proc.poll() is None, proc.log()
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        assert time.time() < deadline, "not SERVING:\n" + proc.log()
        time.sleep(0.1)


def wait_http(url, proc, timeout=180, **kwargs):
    deadline = time.time() + timeout
    while True:
        assert proc.proc.poll() is None, proc.log()
        try:
            r = requests.get(url, timeout=5, **kwargs)
            if r.status_code == 200:
                return r
        except requests.RequestException:
            pass
        assert time.time() < deadline, f"{url} not 200:\n" + proc.log()
        time.sleep(0.1)


def md(key):
    return [("authorization", f"Bearer {key}")]


# ---------------------------------------------------------------------------------------------
# --version, defaults, unreadable files (no model load)

def test_version_on_every_binary():
    # The binaries a build installs in bin/ (the bench/ programs are built on request only and take
    # no --version).
    for name in ("asl-server", "asl-gateway", "asl-cli", "asl-loadtest"):
        r = run([BIN_DIR / name, "--version"])
        assert r.returncode == 0, (name, r.stdout, r.stderr)
        assert re.fullmatch(rf"{name} \d+\.\d+\.\d+ \(git ([0-9a-f]{{7,40}}|unknown)\)\n", r.stdout), (name, r.stdout)


def test_default_binds_are_loopback():
    r = run([BIN_DIR / "asl-gateway", "--help"])
    assert r.returncode == 0 and "127.0.0.1:8080" in r.stdout, r.stdout
    r = run([BIN_DIR / "asl-server", "--help"])
    assert r.returncode == 0
    assert "--server.host (string, default 127.0.0.1) [env ASL_SERVER_SERVER_HOST]" in r.stdout, r.stdout


def test_unreadable_files_exit_2_naming_them(tmp_path):
    missing = tmp_path / "missing.pem"
    cases = [
        ([BIN_DIR / "asl-server", f"--server.api_key_file={missing}"], {}),
        ([BIN_DIR / "asl-server", f"--server.tls_cert_file={missing}", f"--server.tls_key_file={missing}"], {}),
        ([BIN_DIR / "asl-server"], {"ASL_SERVER_SERVER_API_KEY_FILE": str(missing)}),
        ([BIN_DIR / "asl-gateway", f"--api-key-file={missing}"], {}),
        ([BIN_DIR / "asl-gateway", f"--tls-cert-file={missing}", f"--tls-key-file={missing}"], {}),
        ([BIN_DIR / "asl-gateway", f"--backend-ca-file={missing}"], {}),
        ([BIN_DIR / "asl-gateway", f"--backend-api-key-file={missing}"], {}),
    ]
    for args, env in cases:
        r = run(args, env=env)
        assert r.returncode == 2, (args, env, r.returncode, r.stdout, r.stderr)
        assert str(missing) in r.stderr, (args, r.stderr)
    notpem = tmp_path / "not.pem"
    notpem.write_text("hello\n")
    r = run([BIN_DIR / "asl-gateway", f"--tls-cert-file={notpem}", f"--tls-key-file={notpem}"])
    assert r.returncode == 2 and str(notpem) in r.stderr and "PEM" in r.stderr, r.stderr
    r = run([BIN_DIR / "asl-server", "--server.tls_cert_file=/x.pem"])
    assert r.returncode == 2 and "server.tls_key_file" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# API keys on both faces, CORS, environment variables: one stack

@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    d = tmp_path_factory.mktemp("keyed")
    keys = d / "server-keys.txt"
    keys.write_text("# the server's keys\n" + "\n".join(KEYS) + "\n")
    backend_key = d / "backend-key.txt"
    backend_key.write_text(KEYS[1] + "\n")
    gw_keys = d / "gateway-keys.txt"
    gw_keys.write_text(GW_KEY + "\n")
    server = start_server(d, f"--server.api_key_file={keys}",
                          env={"ASL_SERVER_API_KEYS": ENV_KEY,
                               # a key set by its environment variable only
                               "ASL_SERVER_SERVER_MAX_PROMPT_TOKENS": "1000"})
    channel = grpc.insecure_channel(server.address)
    http_port = free_port()
    # The gateway's listen address, backend and keys come from environment variables only.
    gateway = Proc("asl-gateway", [BIN_DIR / "asl-gateway", "--threads=8",
                                   "--cors-allow-origin", "https://app.example,https://other.example"], d,
                   env={"ASL_GATEWAY_LISTEN": f"127.0.0.1:{http_port}",
                        "ASL_GATEWAY_BACKEND": server.address,
                        "ASL_GATEWAY_API_KEY_FILE": str(gw_keys),
                        "ASL_GATEWAY_API_KEYS": GW_ENV_KEY,
                        "ASL_GATEWAY_BACKEND_API_KEY_FILE": str(backend_key)})
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_health(channel, server)
        wait_http(base + "/health", gateway)

        class S:
            pass
        s = S()
        s.server, s.gateway, s.channel, s.base, s.dir = server, gateway, channel, base, d
        s.stub = pb_grpc.GenerationStub(channel)
        yield s
    finally:
        assert gateway.stop() == 0, gateway.log()
        assert "drained" in gateway.log(), gateway.log()  # Serve() returned: not the grace's exit
        channel.close()
        assert server.stop() == 0, server.log()


def test_grpc_calls_need_a_key(keyed):
    stub = keyed.stub
    calls = {
        "GetModelInfo": lambda m: stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=m, timeout=30),
        "Tokenize": lambda m: stub.Tokenize(pb.TokenizeRequest(text="hello"), metadata=m, timeout=30),
        "ResetPrefixCache": lambda m: stub.ResetPrefixCache(pb.ResetPrefixCacheRequest(), metadata=m, timeout=30),
        "Generate": lambda m: list(stub.Generate(pb.GenerateRequest(
            prompt="Hi", sampling=pb.SamplingParams(max_tokens=2)), metadata=m, timeout=60)),
    }
    for name, call in calls.items():
        for bad in (None, md("sk-wrong"), [("authorization", KEYS[0])]):  # missing, wrong, not Bearer
            with pytest.raises(grpc.RpcError) as e:
                call(bad)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, bad, e.value)
            assert "sk-" not in e.value.details(), e.value.details()  # never echoes a key
        for good in KEYS + [ENV_KEY]:
            call(md(good))
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md(ENV_KEY), timeout=30)
    assert info.max_prompt_tokens == 1000  # ASL_SERVER_SERVER_MAX_PROMPT_TOKENS
    msgs = list(stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_tokens=3)),
                              metadata=md(KEYS[0]), timeout=60))
    assert msgs[-1].HasField("complete")


def test_grpc_health_stays_open(keyed):
    r = health_pb2_grpc.HealthStub(keyed.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_gateway_keys_with_the_openai_client(keyed):
    good = openai.OpenAI(base_url=keyed.base + "/v1", api_key=GW_KEY, max_retries=0, timeout=120)
    model = good.models.list().data[0].id
    from_env = openai.OpenAI(base_url=keyed.base + "/v1", api_key=GW_ENV_KEY, max_retries=0, timeout=120)
    assert from_env.models.list().data[0].id == model
    out = good.chat.completions.create(model=model, messages=CHAT, max_tokens=4, temperature=0)
    assert out.choices[0].message.content  # and the gateway's key reached the backend
    stream = good.chat.completions.create(model=model, messages=CHAT, max_tokens=4, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    for key in ("sk-wrong", KEYS[0]):  # the server's keys are not the gateway's
        bad = openai.OpenAI(base_url=keyed.base + "/v1", api_key=key, max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.chat.completions.create(model=model, messages=CHAT, max_tokens=4)
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_api_key" and e.value.body["type"] == "invalid_request_error"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_gateway_missing_key_is_openai_shaped_401(keyed):
    # One keep-alive connection for all: a refused POST's body must not be read as the next request.
    session = requests.Session()
    for path, method in (("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/models", "get"),
                         ("/v1/completions", "post"), ("/v1/models", "get")):
        r = getattr(session, method)(keyed.base + path, json={"model": "m", "prompt": "x"}, timeout=30)
        assert r.status_code == 401, (path, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "invalid_api_key", err
        assert err["param"] is None and "API key" in err["message"]
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = requests.get(keyed.base + "/v1/models", headers={"Authorization": "Bearer sk-wrong"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # /health stays open for probes.
    r = requests.get(keyed.base + "/health", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_gateway_without_the_backend_key_is_refused_by_the_server(keyed):
    port = free_port()
    gw = Proc("asl-gateway-nokey", [BIN_DIR / "asl-gateway", f"--listen=127.0.0.1:{port}",
                                    f"--backend={keyed.server.address}"], keyed.dir)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", gw)  # health is open on the server too
        r = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        assert r.status_code >= 500, r.text
        assert "API key" in r.json()["error"]["message"], r.text
    finally:
        assert gw.stop() == 0, gw.log()


def test_cors_preflight_and_headers(keyed):
    r = requests.options(keyed.base + "/v1/chat/completions", timeout=30, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 204, r.text
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    assert "Origin" in r.headers.get("Vary", "")
    # A request from an allowed origin carries the header, errors (here: no key) included.
    r = requests.post(keyed.base + "/v1/completions", json={"model": "m", "prompt": "x"}, timeout=30,
                      headers={"Origin": "https://other.example"})
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == "https://other.example"
    r = requests.get(keyed.base + "/v1/models", timeout=30,
                     headers={"Origin": "https://app.example", "Authorization": f"Bearer {GW_KEY}"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    # Another origin gets no CORS headers: the browser refuses the response.
    for method in ("options", "get"):
        r = getattr(requests, method)(keyed.base + "/v1/models", timeout=30, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in r.headers, (method, r.headers)


def test_loadtest_sends_its_key(keyed, tmp_path):
    base = [BIN_DIR / "asl-loadtest", "--num-requests=2", "--max-tokens=2", "--warmup=0", "--concurrency=1"]
    r = run(base + [f"--target={keyed.server.address}", f"--api-key={KEYS[0]}", f"--json={tmp_path / 'g.json'}"],
            timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(x["ok"] for x in json.loads((tmp_path / "g.json").read_text())["requests"])
    r = run(base + [f"--target={keyed.server.address}", f"--json={tmp_path / 'n.json'}"], timeout=300)  # no key
    results = json.loads((tmp_path / "n.json").read_text())["requests"]
    assert [x["status"] for x in results] == ["UNAUTHENTICATED"] * 2, results
    # The OpenAI mode against the gateway; the key from the environment variable.
    r = run(base + ["--api=openai", f"--target={keyed.base}", f"--json={tmp_path / 'h.json'}"],
            env={"ASL_LOADTEST_API_KEY": GW_KEY}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(x["ok"] for x in json.loads((tmp_path / "h.json").read_text())["requests"])


# ---------------------------------------------------------------------------------------------
# TLS: certificates made here by openssl

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")

    def ossl(*args):
        r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=asl-test-ca")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                  "extendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        ossl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=asl-test-{name}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d


@pytest.fixture(scope="module")
def tls_stack(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    server = start_server(d, f"--server.tls_cert_file={pki / 'server.pem'}",
                          f"--server.tls_key_file={pki / 'server.key'}")
    ca = (pki / "ca.pem").read_bytes()
    channel = grpc.secure_channel(server.address, grpc.ssl_channel_credentials(root_certificates=ca))
    http_port = free_port()
    gateway = Proc("asl-gateway-https", [BIN_DIR / "asl-gateway", f"--listen=127.0.0.1:{http_port}",
                                         f"--backend={server.address}", f"--backend-ca-file={pki / 'ca.pem'}",
                                         f"--tls-cert-file={pki / 'server.pem'}",
                                         f"--tls-key-file={pki / 'server.key'}"], d)
    base = f"https://127.0.0.1:{http_port}"
    try:
        wait_health(channel, server)
        wait_http(base + "/health", gateway, verify=str(pki / "ca.pem"))

        class S:
            pass
        s = S()
        s.server, s.channel, s.base, s.gateway, s.http_port = server, channel, base, gateway, http_port
        yield s
    finally:
        assert gateway.stop() == 0, gateway.log()
        assert "drained" in gateway.log(), gateway.log()  # Serve() returned: not the grace's exit
        channel.close()
        assert server.stop() == 0, server.log()


def test_certificate_and_key_that_do_not_match(pki):
    cert, key = pki / "server.pem", pki / "client.key"
    r = run([BIN_DIR / "asl-gateway", f"--tls-cert-file={cert}", f"--tls-key-file={key}"])
    assert r.returncode == 2 and str(cert) in r.stderr and str(key) in r.stderr, r.stderr
    r = run([BIN_DIR / "asl-server", f"--model.path={MODEL}", f"--server.grpc_port={free_port()}",
             "--server.metrics_port=0", f"--server.tls_cert_file={cert}", f"--server.tls_key_file={key}"])
    assert r.returncode == 1 and str(cert) in r.stdout + r.stderr, r.stdout + r.stderr


def test_grpc_tls_handshake_needs_the_ca(tls_stack, pki):
    stub = pb_grpc.GenerationStub(tls_stack.channel)
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).num_layers == 30
    # Without our CA (the system's roots) and in plaintext: no handshake.
    for channel in (grpc.secure_channel(tls_stack.server.address, grpc.ssl_channel_credentials()),
                    grpc.insecure_channel(tls_stack.server.address)):
        with channel:
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.GenerationStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value


def test_https_gateway_needs_the_ca(tls_stack, pki):
    ca = str(pki / "ca.pem")
    r = requests.get(tls_stack.base + "/health", verify=ca, timeout=30)  # and the backend channel is TLS
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    client = openai.OpenAI(base_url=tls_stack.base + "/v1", api_key="unused", max_retries=0, timeout=120,
                           http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=ca)))
    model = client.models.list().data[0].id
    out = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0)
    assert out.choices[0].text
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_stack.base + "/health", timeout=30)  # the system's roots do not know our CA
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{tls_stack.http_port}/health", timeout=10)  # not plaintext


def test_loadtest_over_tls(tls_stack, pki, tmp_path):
    base = [BIN_DIR / "asl-loadtest", "--num-requests=1", "--max-tokens=2", "--warmup=0",
            f"--ca-file={pki / 'ca.pem'}"]
    r = run(base + [f"--target={tls_stack.server.address}"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(base + ["--api=openai", f"--target={tls_stack.base}", f"--json={tmp_path / 'h.json'}"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(x["ok"] for x in json.loads((tmp_path / "h.json").read_text())["requests"])


def test_grpc_mutual_tls(pki, tmp_path):
    server = start_server(tmp_path, f"--server.tls_cert_file={pki / 'server.pem'}",
                          f"--server.tls_key_file={pki / 'server.key'}",
                          f"--server.tls_client_ca_file={pki / 'ca.pem'}")
    ca = (pki / "ca.pem").read_bytes()
    with_cert = grpc.ssl_channel_credentials(root_certificates=ca, private_key=(pki / "client.key").read_bytes(),
                                             certificate_chain=(pki / "client.pem").read_bytes())
    try:
        with grpc.secure_channel(server.address, with_cert) as ch:
            wait_health(ch, server)
        with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(root_certificates=ca)) as ch:
            with pytest.raises(grpc.RpcError) as e:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # The gateway presents the client certificate to its backend.
        port = free_port()
        gw = Proc("asl-gateway-mtls", [BIN_DIR / "asl-gateway", f"--listen=127.0.0.1:{port}",
                                       f"--backend={server.address}", f"--backend-ca-file={pki / 'ca.pem'}",
                                       f"--backend-cert-file={pki / 'client.pem'}",
                                       f"--backend-key-file={pki / 'client.key'}"], tmp_path)
        try:
            wait_http(f"http://127.0.0.1:{port}/v1/models", gw)
        finally:
            assert gw.stop() == 0, gw.log()
    finally:
        assert server.stop() == 0, server.log()


# ---------------------------------------------------------------------------------------------
# The gateway's drain

@pytest.fixture
def plain_stack(tmp_path):
    server = start_server(tmp_path)
    channel = grpc.insecure_channel(server.address)
    try:
        wait_health(channel, server)

        def gateway(name, *args):
            port = free_port()
            gw = Proc(name, [BIN_DIR / "asl-gateway", f"--listen=127.0.0.1:{port}", f"--backend={server.address}",
                             *args], tmp_path)
            gw.base = f"http://127.0.0.1:{port}"
            wait_http(gw.base + "/health", gw)
            return gw
        yield gateway
    finally:
        channel.close()
        assert server.stop() == 0, server.log()


def open_stream(base, max_tokens):
    """A streamed completion; returns (response, iterator of SSE data lines) once the first token came."""
    r = requests.post(base + "/v1/completions", stream=True, timeout=300, json={
        "model": "m", "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True,
        "temperature": 0, "stream": True})
    assert r.status_code == 200, r.text
    lines = (line for line in r.iter_lines(decode_unicode=True) if line.startswith("data: "))
    first = next(lines)
    assert json.loads(first[6:])["choices"][0]["text"] is not None
    return r, lines


def wait_refused(gw, timeout=60):
    """Until a new connection to the gateway is refused (its listening socket goes at the signal)."""
    deadline = time.time() + timeout
    while True:
        try:
            requests.get(gw.base + "/health", timeout=10, headers={"Connection": "close"})
        except requests.ConnectionError:
            return
        assert time.time() < deadline, "still accepting after SIGTERM:\n" + gw.log()
        time.sleep(0.05)


def test_sigterm_lets_a_live_stream_finish(plain_stack):
    gw = plain_stack("asl-gateway-drain", "--drain-seconds=300")
    r, lines = open_stream(gw.base, max_tokens=40)
    gw.proc.send_signal(signal.SIGTERM)
    rest = list(lines)  # the stream runs to its end...
    assert rest[-1] == "data: [DONE]", rest[-3:]
    finish = [json.loads(x[6:]) for x in rest[:-1]]
    assert any(c["choices"] and c["choices"][0].get("finish_reason") == "length" for c in finish), finish[-2:]
    assert gw.proc.wait(timeout=120) == 0, gw.log()  # ...then the gateway exits 0
    log = gw.log()
    assert "draining" in log and "drained" in log, log
    with pytest.raises(requests.ConnectionError):  # and accepts nothing more
        requests.get(gw.base + "/health", timeout=10)


def test_new_connections_are_refused_while_draining(plain_stack):
    gw = plain_stack("asl-gateway-drain-refuse", "--drain-seconds=300")
    r, lines = open_stream(gw.base, max_tokens=200)
    gw.proc.send_signal(signal.SIGTERM)
    wait_refused(gw)
    assert gw.proc.poll() is None  # the stream still runs
    assert list(lines)[-1] == "data: [DONE]"
    assert gw.proc.wait(timeout=120) == 0, gw.log()


def test_second_signal_exits_at_once(plain_stack):
    gw = plain_stack("asl-gateway-drain-twice", "--drain-seconds=300")
    r, lines = open_stream(gw.base, max_tokens=2000)
    gw.proc.send_signal(signal.SIGTERM)
    wait_refused(gw)  # the first signal was taken (two pending SIGTERMs would be one)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=120) == 1, gw.log()
    with contextlib.suppress(requests.RequestException):
        rest = list(lines)
        assert not rest or rest[-1] != "data: [DONE]"
    assert "second signal" in gw.log()


def test_drain_ends_at_the_grace(plain_stack):
    gw = plain_stack("asl-gateway-drain-grace", "--drain-seconds=1")
    r, lines = open_stream(gw.base, max_tokens=2000)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(timeout=120) == 0, gw.log()
    assert "passed with requests still in flight" in gw.log()

"""asl-server end to end: the real binary on the default model, driven over gRPC and /metrics.

Run: ctest -L integration (from the build dir), or
     ASL_BIN_DIR=build-server/bin .venv/bin/python -m pytest -q tests/server/test_server.py
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import health_pb2, health_pb2_grpc, pb, start_server

NUM_LAYERS = 30  # SmolLM2-135M
POLICIES = ["full", "snapkv", "fastkv", "gemfilter", "asl", "asl_2pass"]


# ---- helpers --------------------------------------------------------------------------------------

def long_prompt(lines=24):
    """About 600 tokens of distinct lines with one fact to retrieve."""
    body = [f"Line {i}: the {['red', 'green', 'blue', 'amber'][i % 4]} lantern number {i} hangs above "
            f"door {i * 7 % 53} of the old harbour warehouse." for i in range(lines)]
    body.insert(lines // 2, "Remember this: the secret password is TANGERINE-42.")
    return "\n".join(body) + "\nQuestion: what is the secret password?\nAnswer:"


def generate(stub, timeout=120, **kwargs):
    """Runs one Generate; returns (chunks, complete)."""
    chunks, complete = [], None
    for r in stub.Generate(pb.GenerateRequest(**kwargs), timeout=timeout):
        if r.HasField("chunk"):
            assert complete is None, "chunk after complete"
            chunks.append(r.chunk)
        else:
            assert r.HasField("complete")
            assert complete is None, "two complete messages"
            complete = r.complete
    assert complete is not None, "stream ended without complete"
    return chunks, complete


def greedy(max_tokens, **extra):
    return pb.SamplingParams(temperature=0.0, max_tokens=max_tokens, **extra)


def metrics(server):
    """name -> list of (sample name, labels, value), parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(server.metrics_text()):
        out[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return out


def _label_matches(labels, key, want):
    got = labels.get(key)
    if key == "le" and got is not None:  # bucket bounds: compare as numbers ("14" == "14.0")
        return float(got) == float(want)
    return got == want


def sample(m, family, sample_name, **labels):
    """Sum of the samples named `sample_name` in `family` whose labels include `labels`."""
    return sum(v for n, l, v in m.get(family, [])
               if n == sample_name and all(_label_matches(l, k, x) for k, x in labels.items()))


def wait_blocks_free(server, timeout=15):
    deadline = time.time() + timeout
    m = None
    while time.time() < deadline:
        m = metrics(server)
        if (sample(m, "asl_kv_blocks_used", "asl_kv_blocks_used") == 0
                and sample(m, "asl_requests_running", "asl_requests_running") == 0
                and sample(m, "asl_requests_waiting", "asl_requests_waiting") == 0):
            return m
        time.sleep(0.1)
    raise AssertionError(
        f"KV blocks not freed: used={sample(m, 'asl_kv_blocks_used', 'asl_kv_blocks_used')} "
        f"running={sample(m, 'asl_requests_running', 'asl_requests_running')}")


def assert_still_serving(server):
    assert server.health_status() == health_pb2.HealthCheckResponse.SERVING
    _, c = generate(server.stub, prompt="Hello", sampling=greedy(2, ignore_eos=True))
    assert c.usage.completion_tokens == 2


# ---- basic generation -----------------------------------------------------------------------------

def test_model_info(server):
    info = server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.num_layers == NUM_LAYERS
    assert info.vocab_size > 0 and info.context_length > 0
    assert info.max_prompt_tokens == 2500
    assert info.kv_blocks_total > 0 and info.kv_block_size == 16
    assert list(info.policies) == POLICIES
    assert info.default_pruning.policy == "full"
    assert info.default_pruning.min_layer == round(NUM_LAYERS * 10 / 32)  # resolved for the depth
    assert len(info.eos_token_ids) > 0


def test_streamed_generation(server):
    chunks, c = generate(server.stub, request_id="stream-1", prompt="The capital of France is",
                         sampling=greedy(24, ignore_eos=True))
    ids = [t for ch in chunks for t in ch.token_ids]
    assert len(chunks) >= 2, "expected a stream, not one message"
    assert c.finish_reason == pb.FINISH_REASON_LENGTH
    assert c.usage.completion_tokens == len(ids) == 24
    assert c.usage.prompt_tokens > 0
    assert c.usage.kv_tokens_kept == c.usage.kv_tokens_full == NUM_LAYERS * c.usage.prompt_tokens
    assert c.timings.ttft_seconds > 0 and c.timings.e2e_seconds >= c.timings.ttft_seconds
    assert c.timings.mean_tpot_seconds > 0
    assert c.pruning.policy == "full"
    assert c.pruning.outcome == pb.SELECTION_OUTCOME_NOT_APPLICABLE
    text = "".join(ch.text for ch in chunks)
    assert text.strip(), "no text"
    # Chunks carry the request id; the text is the detokenized ids.
    for r in server.stub.Generate(pb.GenerateRequest(request_id="stream-2", prompt="Hi", sampling=greedy(2)),
                                  timeout=60):
        assert r.request_id == "stream-2"


def test_default_request_id_assigned(server):
    for r in server.stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=greedy(1)), timeout=60):
        assert r.request_id.startswith("req-")


def test_stop_string_and_logprobs(server):
    chunks, c = generate(server.stub, prompt="Count: 1, 2, 3, 4,",
                         sampling=greedy(32, ignore_eos=True, stop=[","], logprobs=3))
    assert c.finish_reason == pb.FINISH_REASON_STOP
    assert c.stop_string == ","
    ids = [t for ch in chunks for t in ch.token_ids]
    lps = [lp for ch in chunks for lp in ch.logprobs]
    tops = [t for ch in chunks for t in ch.top_logprobs]
    assert len(lps) == len(tops) == len(ids)
    assert all(len(t.candidates) == 3 for t in tops)
    assert all(lp.logprob <= 0 for lp in lps)
    assert "," not in "".join(ch.text for ch in chunks)


def test_chat_messages(server):
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="system", content="You are terse."),
                                     pb.ChatMessage(role="user", content="Name a colour.")])
    tok = server.stub.Tokenize(pb.TokenizeRequest(chat=chat), timeout=10)
    assert "<|im_start|>assistant" in tok.rendered_prompt
    chunks, c = generate(server.stub, chat=chat, sampling=greedy(8))
    assert c.usage.prompt_tokens == len(tok.token_ids)
    assert c.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert c.usage.completion_tokens >= 1
    # Without the generation prompt the rendered conversation is shorter.
    tok2 = server.stub.Tokenize(pb.TokenizeRequest(chat=chat, add_generation_prompt=False), timeout=10)
    assert len(tok2.token_ids) < len(tok.token_ids)


def test_token_id_input_matches_text(server):
    text = "Once upon a time, in a small village,"
    tok = server.stub.Tokenize(pb.TokenizeRequest(text=text, return_pieces=True), timeout=10)
    assert len(tok.pieces) == len(tok.token_ids) > 3
    assert "".join(tok.pieces) == text
    a_chunks, a = generate(server.stub, prompt=text, sampling=greedy(12, ignore_eos=True))
    b_chunks, b = generate(server.stub, token_ids=pb.TokenIds(ids=list(tok.token_ids)),
                           sampling=greedy(12, ignore_eos=True))
    assert a.usage.prompt_tokens == b.usage.prompt_tokens == len(tok.token_ids)
    assert [t for ch in a_chunks for t in ch.token_ids] == [t for ch in b_chunks for t in ch.token_ids]


# ---- pruning policies -----------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy(server, policy):
    prompt = long_prompt()
    n = len(server.stub.Tokenize(pb.TokenizeRequest(text=prompt), timeout=10).token_ids)
    assert 500 <= n <= 900, n
    pruning = pb.PruningParams(policy=policy, select_k=128, kv_budget=128, window=32)
    if policy in ("asl", "asl_2pass"):
        pruning.max_layer = NUM_LAYERS - 1  # selection happens: at tau, or forced at the last layer
    chunks, c = generate(server.stub, prompt=prompt, sampling=greedy(8, ignore_eos=True), pruning=pruning,
                         detailed_pruning_report=True)
    r = c.pruning
    assert r.policy == policy
    assert c.usage.completion_tokens == 8
    assert r.num_prompt_tokens == c.usage.prompt_tokens == n
    assert r.num_kv_tokens_full == NUM_LAYERS * n
    assert c.usage.kv_tokens_kept == r.num_kv_tokens_kept > 0
    assert r.kv_bytes > 0
    if policy == "full":
        assert r.outcome == pb.SELECTION_OUTCOME_NOT_APPLICABLE
        assert r.num_kv_tokens_kept == r.num_kv_tokens_full
        return
    assert r.num_kv_tokens_kept < r.num_kv_tokens_full, "nothing pruned"
    if policy == "snapkv":
        assert r.outcome == pb.SELECTION_OUTCOME_NOT_APPLICABLE
        assert r.num_kv_tokens_kept == NUM_LAYERS * 128
        return
    assert r.outcome in (pb.SELECTION_OUTCOME_SELECTED, pb.SELECTION_OUTCOME_FORCED), r
    assert 0 <= r.selection_layer < NUM_LAYERS
    assert r.num_propagated_tokens == 128
    assert len(r.selected_positions) == 128
    assert list(r.selected_positions) == sorted(r.selected_positions)
    assert r.selected_positions[-1] == n - 1 or policy in ("gemfilter",), "the window is always kept"
    if policy == "fastkv":
        assert r.selection_layer == round(NUM_LAYERS * 15 / 32)
    if policy == "gemfilter":
        assert r.selection_layer == round(NUM_LAYERS * 13 / 32)
    if policy in ("asl", "asl_2pass"):
        assert r.selection_layer > round(NUM_LAYERS * 10 / 32)  # earliest is L_min + 1
        assert len(r.variance_ratios) > 0


def test_pruning_report_details_only_when_asked(server):
    pruning = pb.PruningParams(policy="fastkv", select_k=128, kv_budget=128)
    _, c = generate(server.stub, prompt=long_prompt(), sampling=greedy(1), pruning=pruning)
    assert c.pruning.num_propagated_tokens == 128
    assert len(c.pruning.selected_positions) == 0


# ---- health ---------------------------------------------------------------------------------------

def test_health_transitions(fresh_server_dir):
    s = start_server(fresh_server_dir, wait=False)
    statuses = []
    try:
        # Watch from before the server listens: the first status is NOT_SERVING (model loading).
        watch = s.health.Watch(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True, timeout=180)
        H = health_pb2.HealthCheckResponse
        for msg in watch:
            statuses.append(msg.status)
            if msg.status == H.NOT_SERVING and H.SERVING not in statuses:
                # While loading, Generate is refused with UNAVAILABLE.
                try:
                    generate(s.stub, prompt="Hi", sampling=greedy(1), timeout=5)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE
            if msg.status == H.SERVING:
                assert s.health_status("asl.v1.Generation") == H.SERVING
                watch.cancel()
                break
        assert statuses[0] == H.NOT_SERVING, statuses
        assert statuses[-1] == H.SERVING
        # Draining: a long request keeps the server busy while health turns NOT_SERVING.
        results = {}
        started = threading.Event()

        def long_request():
            try:
                call = s.stub.Generate(pb.GenerateRequest(prompt="Tell me a story.",
                                                          sampling=greedy(64, ignore_eos=True)), timeout=300)
                for msg in call:
                    started.set()
                    if msg.HasField("complete"):
                        results["complete"] = msg.complete
            except grpc.RpcError as e:
                results["error"] = e
            finally:
                started.set()

        t = threading.Thread(target=long_request)
        t.start()
        assert started.wait(timeout=120)  # the request is running before the signal
        s.signal(signal.SIGTERM)
        deadline = time.time() + 10
        while s.health_status() != H.NOT_SERVING and time.time() < deadline:
            time.sleep(0.02)
        t.join(timeout=120)
        assert "complete" in results, results.get("error")
        assert results["complete"].usage.completion_tokens == 64
        assert s.proc.wait(timeout=60) == 0
    finally:
        rc = s.stop()
    assert rc == 0, s.log()


# ---- prefix cache (issue 15) ----------------------------------------------------------------------

def test_prefix_cache_hit_reports_cached_tokens_and_same_output(server):
    # A long shared system prompt, two different questions: the second prefills only its tail.
    system = " ".join(f"Rule {i}: answer briefly and truthfully about item {i}." for i in range(40))
    def ask(question, rid, **extra):
        return generate(server.stub, request_id=rid, sampling=greedy(8, ignore_eos=True),
                        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="system", content=system),
                                                       pb.ChatMessage(role="user", content=question)]), **extra)
    server.stub.ResetPrefixCache(pb.ResetPrefixCacheRequest(), timeout=10)
    hits_before = sample(metrics(server), "asl_prefix_cache_hits", "asl_prefix_cache_hits_total")
    _, first = ask("What is item 3?", "pc-1")
    assert first.usage.cached_tokens == 0
    chunks, second = ask("What is item 7?", "pc-2")
    assert second.usage.prompt_tokens > 400
    # Everything up to the question is cached (in whole blocks).
    assert second.usage.cached_tokens > 0.8 * second.usage.prompt_tokens
    m = metrics(server)
    assert sample(m, "asl_prefix_cache_hits", "asl_prefix_cache_hits_total") >= hits_before + second.usage.cached_tokens
    assert sample(m, "asl_kv_blocks_cached", "asl_kv_blocks_cached") > 0
    # The same question again gets the same answer (greedy) with the cache and without it.
    c_hit, again = ask("What is item 7?", "pc-3")
    c_off, off = ask("What is item 7?", "pc-4", cache_prompt=False)
    assert again.usage.cached_tokens > second.usage.cached_tokens - 1
    assert off.usage.cached_tokens == 0
    ids = lambda cs: [t for ch in cs for t in ch.token_ids]
    assert ids(c_hit) == ids(c_off) == ids(chunks)
    # After a reset nothing is cached.
    server.stub.ResetPrefixCache(pb.ResetPrefixCacheRequest(), timeout=10)
    _, cold = ask("What is item 7?", "pc-5")
    assert cold.usage.cached_tokens == 0


# ---- cancellation, deadlines, concurrency ---------------------------------------------------------

def test_cancellation_frees_blocks(server):
    before = metrics(server)
    call = server.stub.Generate(pb.GenerateRequest(prompt=long_prompt(), sampling=greedy(500, ignore_eos=True)),
                                timeout=300)
    got = 0
    for r in call:
        got += len(r.chunk.token_ids)
        if got >= 3:
            break
    m = metrics(server)
    assert sample(m, "asl_kv_blocks_used", "asl_kv_blocks_used") > 0
    call.cancel()
    m = wait_blocks_free(server)
    assert sample(m, "asl_requests", "asl_requests_total", status="cancelled") == \
        sample(before, "asl_requests", "asl_requests_total", status="cancelled") + 1
    assert_still_serving(server)


def test_deadline_frees_blocks(server):
    with pytest.raises(grpc.RpcError) as e:
        generate(server.stub, prompt=long_prompt(), sampling=greedy(500, ignore_eos=True), timeout=2.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_blocks_free(server)
    assert_still_serving(server)


def test_deadline_mid_prefill_frees_blocks(server):
    # ~2200 tokens: a prefill of many slices (scheduler.step_prefill_budget), far longer than the
    # deadline, so the deadline lands while the prefill is half done.
    prompt = long_prompt(lines=88)
    n = len(server.stub.Tokenize(pb.TokenizeRequest(text=prompt), timeout=10).token_ids)
    assert 2000 < n <= 2500
    before = metrics(server)
    with pytest.raises(grpc.RpcError) as e:
        generate(server.stub, prompt=prompt, sampling=greedy(4, ignore_eos=True), timeout=1.0,
                 pruning=pb.PruningParams(policy="snapkv", kv_budget=256))  # fits the test's small pool
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    cancelled = sample(before, "asl_requests", "asl_requests_total", status="cancelled")
    deadline = time.time() + 60
    while sample(metrics(server), "asl_requests", "asl_requests_total", status="cancelled") == cancelled:
        assert time.time() < deadline, "the engine never ended the request"
        time.sleep(0.05)
    m = wait_blocks_free(server)
    assert sample(m, "asl_requests_prefilling", "asl_requests_prefilling") == 0
    assert sample(m, "asl_requests", "asl_requests_total", status="cancelled") == cancelled + 1
    assert_still_serving(server)


def test_32_concurrent_streams(server):
    n, results, errors = 32, {}, []

    def one(i):
        try:
            chunks, c = generate(server.stub, request_id=f"c{i}", prompt=f"Story {i}: once upon a time",
                                 sampling=greedy(16, ignore_eos=True), timeout=300)
            results[i] = (sum(len(ch.token_ids) for ch in chunks), c)
        except Exception as ex:  # noqa: BLE001 -- reported below
            errors.append(ex)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    assert len(results) == n
    for got, c in results.values():
        assert got == c.usage.completion_tokens == 16
    wait_blocks_free(server)


# ---- shutdown -------------------------------------------------------------------------------------

def test_sigterm_drains_and_exits_zero(fresh_server_dir):
    s = start_server(fresh_server_dir)
    try:
        call = s.stub.Generate(pb.GenerateRequest(prompt="Write a poem.", sampling=greedy(48, ignore_eos=True)),
                               timeout=300)
        it = iter(call)
        first = next(it)
        assert first.HasField("chunk")
        s.signal(signal.SIGTERM)
        deadline = time.time() + 10
        while s.health_status() == health_pb2.HealthCheckResponse.SERVING and time.time() < deadline:
            time.sleep(0.02)
        # New work is refused while draining.
        with pytest.raises(grpc.RpcError) as e:
            generate(s.stub, prompt="Hi", sampling=greedy(1), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # The running request finishes normally.
        rest = list(it)
        assert rest[-1].HasField("complete")
        assert rest[-1].complete.finish_reason == pb.FINISH_REASON_LENGTH
        assert rest[-1].complete.usage.completion_tokens == 48
        assert s.proc.wait(timeout=60) == 0
    finally:
        rc = s.stop()
    assert rc == 0, s.log()
    assert "shut down" in s.log()


def test_sigterm_grace_expiry_aborts(fresh_server_dir):
    s = start_server(fresh_server_dir, "--server.shutdown_grace_seconds=0.5")
    try:
        call = s.stub.Generate(pb.GenerateRequest(prompt="Write a long poem.",
                                                  sampling=greedy(1000, ignore_eos=True)), timeout=300)
        it = iter(call)
        next(it)
        s.signal(signal.SIGTERM)
        msgs = []
        with pytest.raises(grpc.RpcError) as e:
            for r in it:
                msgs.append(r)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert msgs and msgs[-1].HasField("complete")
        assert msgs[-1].complete.finish_reason == pb.FINISH_REASON_ABORT
        assert s.proc.wait(timeout=60) == 0
    finally:
        s.stop()


def test_queue_full_is_resource_exhausted(fresh_server_dir):
    s = start_server(fresh_server_dir, "--scheduler.max_num_seqs=1", "--scheduler.max_waiting=1")
    try:
        def call():
            return s.stub.Generate(pb.GenerateRequest(prompt="Go on.", sampling=greedy(1000, ignore_eos=True)),
                                   timeout=300)
        # One at a time: two calls sent together may reach the engine in either order, and then the
        # first token of calls[0] would come only after calls[1] had finished.
        calls = [call()]
        next(iter(calls[0]))  # running
        calls.append(call())
        # The second one waits: poll the gauges rather than sleep, a loaded machine may take a while
        # to deliver the second call to the engine.
        deadline = time.time() + 60
        while True:
            m = metrics(s)
            if (sample(m, "asl_requests_running", "asl_requests_running") == 1
                    and sample(m, "asl_requests_waiting", "asl_requests_waiting") == 1):
                break
            assert time.time() < deadline, "the second request never showed as waiting"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as e:
            generate(s.stub, prompt="Hi", sampling=greedy(1), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue" in e.value.details()
        for c in calls:
            c.cancel()
        wait_blocks_free(s)
    finally:
        assert s.stop() == 0, s.log()


# ---- metrics --------------------------------------------------------------------------------------

ALL_METRICS = [
    "asl_time_to_first_token_seconds", "asl_time_per_output_token_seconds", "asl_e2e_request_latency_seconds",
    "asl_request_queue_time_seconds", "asl_request_prefill_time_seconds", "asl_selection_layer",
    "asl_selection_outcome", "asl_kv_kept_ratio", "asl_pruned_prompt_tokens", "asl_kv_blocks_capacity",
    "asl_kv_blocks_used", "asl_kv_cache_usage_ratio", "asl_kv_cache_bytes_used",
    "asl_device_memory_allocated_bytes", "asl_requests_running",
    "asl_requests_waiting", "asl_requests", "asl_prompt_tokens", "asl_generation_tokens", "asl_preemptions",
    "asl_request_prefill_slices", "asl_step_seconds", "asl_prefill_token_layers", "asl_requests_prefilling",
    "asl_kv_blocks_cached", "asl_prefix_cache_queries", "asl_prefix_cache_hits", "asl_prefix_cache_evictions",
]
PROCESS_METRICS = ["process_cpu_seconds", "process_start_time_seconds", "process_virtual_memory_bytes",
                   "process_resident_memory_bytes", "process_open_fds", "process_max_fds"]
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"  # the default model's file stem (ServedModelName)
VLLM_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                     20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]


def test_metrics_labels_and_process_metrics(server):
    """Every engine metric carries model_name (vLLM's convention), bucket bounds are written as their
    shortest decimal, and the standard process metrics describe this process."""
    generate(server.stub, prompt="Label check", sampling=greedy(2, ignore_eos=True))
    m = metrics(server)
    for family, samples in m.items():
        if not family.startswith("asl_"):
            continue
        assert samples, family
        for n, labels, _ in samples:
            assert labels.get("model_name") == MODEL_NAME, f"{n} {labels}"
            if "le" in labels and labels["le"] != "+Inf":
                assert labels["le"] == repr(float(labels["le"])).removesuffix(".0") or \
                    labels["le"] == repr(float(labels["le"])), f"{n}: inexact bucket label le={labels['le']}"
    (_, build, value), = m["asl_build_info"]
    assert value == 1 and build["version"] and build["revision"] and build["model_name"] == MODEL_NAME, build
    ratio_les = {l["le"] for n, l, _ in m["asl_kv_kept_ratio"] if n.endswith("_bucket")}
    assert {"0.05", "0.15", "0.95", "1", "+Inf"} <= ratio_les, sorted(ratio_les)
    for name in PROCESS_METRICS:
        assert name in m, f"/metrics lacks {name}"
        assert all("model_name" not in l for _, l, _ in m[name])
    assert sample(m, "process_resident_memory_bytes", "process_resident_memory_bytes") > 10 << 20
    assert sample(m, "process_virtual_memory_bytes", "process_virtual_memory_bytes") >= \
        sample(m, "process_resident_memory_bytes", "process_resident_memory_bytes")
    start = sample(m, "process_start_time_seconds", "process_start_time_seconds")
    assert time.time() - 3600 < start <= time.time()
    assert sample(m, "process_cpu_seconds", "process_cpu_seconds_total") > 0
    assert 3 <= sample(m, "process_open_fds", "process_open_fds") <= sample(m, "process_max_fds", "process_max_fds")


def test_metrics_pass_promtool(server):
    """`promtool check metrics` (Prometheus' own linter, installed by scripts/setup.sh) on a live
    scrape after requests of every kind of series."""
    generate(server.stub, prompt="Lint check", sampling=greedy(3, ignore_eos=True))
    promtool = os.path.join(os.path.dirname(sys.executable), "promtool")
    assert os.access(promtool, os.X_OK), f"{promtool} missing: run scripts/setup.sh"
    r = subprocess.run([promtool, "check", "metrics"], input=server.metrics_text(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def _raw_get(sock, path="/metrics"):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_metrics_idle_connections_and_concurrent_scrapes(server):
    """Connections that send nothing do not hold back a scrape: with three idle connections open,
    scrapes are answered while those connections are still open (the single-threaded endpoint served
    them only after dropping each idle one), and concurrent scrapes all succeed."""
    idle = [socket.create_connection(("127.0.0.1", server.metrics_port), timeout=30) for _ in range(3)]
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(server.metrics_text())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(results) == 4 and all("asl_requests_running" in r for r in results)
        # The idle connections were not dropped to serve those scrapes: they still answer.
        for sock in idle:
            reply = _raw_get(sock)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            assert b"asl_requests_running" in reply
    finally:
        for sock in idle:
            sock.close()
    post = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=30)
    post.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    reply = b""
    while chunk := post.recv(65536):
        reply += chunk
    post.close()
    assert reply.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in reply, reply[:300]


def test_metrics_parse_and_move(server):
    before = metrics(server)
    for name in ALL_METRICS:
        assert name in before, f"/metrics lacks {name}"
    assert sample(before, "asl_kv_blocks_capacity", "asl_kv_blocks_capacity") > 0
    les = sorted({float(l["le"]) for n, l, _ in before["asl_time_to_first_token_seconds"]
                  if n.endswith("_bucket") and l["le"] != "+Inf"})
    assert les == VLLM_TTFT_BUCKETS
    layer_les = {l["le"] for n, l, _ in before["asl_selection_layer"] if n.endswith("_bucket") and l["policy"] == "asl"}
    assert len(layer_les) == NUM_LAYERS + 1  # one bucket per layer, and +Inf

    n_requests = 3
    for i in range(n_requests):
        generate(server.stub, prompt=f"Metrics {i}", sampling=greedy(4, ignore_eos=True))
    _, c = generate(server.stub, prompt=long_prompt(), sampling=greedy(2, ignore_eos=True),
                    pruning=pb.PruningParams(policy="asl", select_k=128, kv_budget=128, max_layer=NUM_LAYERS - 1))
    layer = c.pruning.selection_layer
    assert layer >= 0
    after = wait_blocks_free(server)

    def delta(family, name, **labels):
        return sample(after, family, name, **labels) - sample(before, family, name, **labels)

    ttft = "asl_time_to_first_token_seconds"
    assert delta(ttft, ttft + "_count") == n_requests + 1  # one TTFT per request
    assert delta(ttft, ttft + "_count", policy="full") == n_requests
    assert delta("asl_e2e_request_latency_seconds", "asl_e2e_request_latency_seconds_count") == n_requests + 1
    assert delta("asl_request_queue_time_seconds", "asl_request_queue_time_seconds_count") == n_requests + 1
    assert delta("asl_request_prefill_time_seconds", "asl_request_prefill_time_seconds_count") == n_requests + 1
    tpot = "asl_time_per_output_token_seconds"
    assert delta(tpot, tpot + "_count") == n_requests * 3 + 1  # inter-token gaps
    assert delta("asl_requests", "asl_requests_total", status="length", policy="full") == n_requests
    assert delta("asl_requests", "asl_requests_total", status="length", policy="asl") == 1
    assert delta("asl_generation_tokens", "asl_generation_tokens_total") == n_requests * 4 + 2
    assert delta("asl_prompt_tokens", "asl_prompt_tokens_total") >= c.usage.prompt_tokens
    # The selection layer lands in its own bucket: le=layer moves, le=layer-1 does not.
    sel = "asl_selection_layer"
    assert delta(sel, sel + "_count", policy="asl") == 1
    assert delta(sel, sel + "_bucket", policy="asl", le=layer) == 1
    if layer > 0:
        assert delta(sel, sel + "_bucket", policy="asl", le=layer - 1) == 0
    outcome = "selected" if c.pruning.outcome == pb.SELECTION_OUTCOME_SELECTED else "forced"
    assert delta("asl_selection_outcome", "asl_selection_outcome_total", outcome=outcome) == 1
    assert delta("asl_pruned_prompt_tokens", "asl_pruned_prompt_tokens_total", policy="asl") == \
        c.usage.prompt_tokens - 128
    assert delta("asl_kv_kept_ratio", "asl_kv_kept_ratio_count", policy="asl") == 1
    # Layer-sliced prefill: every request reports its slices; steps are timed by stage.
    assert c.pruning.num_prefill_slices >= 1
    assert delta("asl_request_prefill_slices", "asl_request_prefill_slices_count") == n_requests + 1
    assert delta("asl_request_prefill_slices", "asl_request_prefill_slices_sum", policy="asl") == \
        c.pruning.num_prefill_slices
    step = "asl_step_seconds"
    assert delta(step, step + "_count", stage="prefill") >= n_requests + 1
    assert delta(step, step + "_count", stage="decode") >= n_requests * 3 + 1
    assert delta(step, step + "_sum", stage="prefill") > 0
    assert delta("asl_prefill_token_layers", "asl_prefill_token_layers_total") >= c.pruning.prefill_token_layers
    assert sample(after, "asl_requests_prefilling", "asl_requests_prefilling") == 0


# ---- validation -----------------------------------------------------------------------------------

S, P = pb.SamplingParams, pb.PruningParams
INVALID = [
    ("no input", dict(), "input"),
    ("empty prompt", dict(prompt=""), "prompt"),
    ("empty chat", dict(chat=pb.ChatMessages()), "chat.messages"),
    # Roles are the template's to judge (SmolLM2's takes any); an empty one is refused here.
    ("empty role", dict(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="", content="x")])),
     "chat.messages[0].role"),
    ("empty token ids", dict(token_ids=pb.TokenIds()), "token_ids.ids"),
    ("token id over vocab", dict(token_ids=pb.TokenIds(ids=[1, 10_000_000])), "token_ids.ids[1]"),
    ("negative token id", dict(token_ids=pb.TokenIds(ids=[-1])), "token_ids.ids[0]"),
    ("request id too long", dict(request_id="x" * 300, prompt="hi"), "request_id"),
    ("temperature", dict(prompt="hi", sampling=S(temperature=-1)), "sampling.temperature"),
    ("top_p zero", dict(prompt="hi", sampling=S(top_p=0)), "sampling.top_p"),
    ("top_p over one", dict(prompt="hi", sampling=S(top_p=1.5)), "sampling.top_p"),
    ("top_k", dict(prompt="hi", sampling=S(top_k=-1)), "sampling.top_k"),
    ("min_p", dict(prompt="hi", sampling=S(min_p=2)), "sampling.min_p"),
    ("repetition_penalty", dict(prompt="hi", sampling=S(repetition_penalty=0)), "sampling.repetition_penalty"),
    ("presence_penalty", dict(prompt="hi", sampling=S(presence_penalty=3)), "sampling.presence_penalty"),
    ("frequency_penalty", dict(prompt="hi", sampling=S(frequency_penalty=-3)), "sampling.frequency_penalty"),
    ("max_tokens negative", dict(prompt="hi", sampling=S(max_tokens=-1)), "sampling.max_tokens"),
    ("empty stop string", dict(prompt="hi", sampling=S(stop=[""])), "sampling.stop[0]"),
    ("stop token id", dict(prompt="hi", sampling=S(stop_token_ids=[-5])), "sampling.stop_token_ids[0]"),
    ("logprobs", dict(prompt="hi", sampling=S(logprobs=21)), "sampling.logprobs"),
    ("unknown policy", dict(prompt="hi", pruning=P(policy="h2o")), "pruning.policy"),
    ("pooling", dict(prompt="hi", pruning=P(pooling="min")), "pruning.pooling"),
    ("window", dict(prompt="hi", pruning=P(window=0)), "pruning.window"),
    ("even kernel", dict(prompt="hi", pruning=P(kernel=4)), "pruning.kernel"),
    ("tau", dict(prompt="hi", pruning=P(tau=0)), "pruning.tau"),
    ("select_k", dict(prompt="hi", pruning=P(policy="asl", select_k=16)), "pruning.select_k"),
    ("kv_budget", dict(prompt="hi", pruning=P(kv_budget=8)), "pruning.kv_budget"),
    ("min_layer", dict(prompt="hi", pruning=P(min_layer=99)), "pruning.min_layer"),
    ("obs_layers", dict(prompt="hi", pruning=P(obs_layers=0)), "pruning.obs_layers"),
    ("max_layer", dict(prompt="hi", pruning=P(max_layer=99)), "pruning.max_layer"),
    ("select_layer", dict(prompt="hi", pruning=P(select_layer=99)), "pruning.select_layer"),
    ("negative layer", dict(prompt="hi", pruning=P(select_layer=-7)), "pruning.select_layer"),
]


@pytest.mark.parametrize("name,fields,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_field(server, name, fields, field):
    with pytest.raises(grpc.RpcError) as e:
        generate(server.stub, **fields, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
    assert field in e.value.details(), e.value.details()
    assert server.health_status() == health_pb2.HealthCheckResponse.SERVING


TOO_LONG = [
    ("prompt over max_prompt_tokens", dict(token_ids=pb.TokenIds(ids=[42] * 3000)), "token_ids.ids: 3000 tokens"),
    ("chat over max_prompt_tokens",
     dict(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hello " * 3000)])), "chat: "),
    ("max_tokens over context", dict(prompt="hi", sampling=S(max_tokens=1_000_000)), "sampling.max_tokens: "),
]


@pytest.mark.parametrize("name,fields,field", TOO_LONG, ids=[c[0] for c in TOO_LONG])
def test_too_long_is_out_of_range(server, name, fields, field):
    with pytest.raises(grpc.RpcError) as e:
        generate(server.stub, **fields, timeout=30)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE, e.value
    assert e.value.details().startswith(field), e.value.details()


def _raw_generate(server, request_bytes):
    call = server.channel.unary_stream("/asl.v1.Generation/Generate", request_serializer=None,
                                       response_deserializer=pb.GenerateResponse.FromString)
    return list(call(request_bytes, timeout=30))


@pytest.mark.parametrize("build,field", [
    (lambda: pb.GenerateRequest(prompt="PLACEHOLDER"), "prompt"),
    (lambda: pb.GenerateRequest(chat=pb.ChatMessages(messages=[
        pb.ChatMessage(role="user", content="ok"), pb.ChatMessage(role="user", content="PLACEHOLDER")])),
     "chat.messages[1].content"),
    (lambda: pb.GenerateRequest(prompt="hi", sampling=S(stop=["a", "PLACEHOLDER"])), "sampling.stop[1]"),
], ids=["prompt", "chat content", "stop string"])
def test_invalid_utf8_names_the_field(server, build, field):
    # Python refuses to build such a message, so patch the serialized bytes (same length).
    raw = build().SerializeToString().replace(b"PLACEHOLDER", b"PLACE\xff\xfeHOLD")
    with pytest.raises(grpc.RpcError) as e:
        _raw_generate(server, raw)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(field), e.value.details()
    assert server.health_status() == health_pb2.HealthCheckResponse.SERVING


def test_tokenize_invalid_input(server):
    with pytest.raises(grpc.RpcError) as e:
        server.stub.Tokenize(pb.TokenizeRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "input" in e.value.details()
    call = server.channel.unary_unary("/asl.v1.Generation/Tokenize", request_serializer=None,
                                      response_deserializer=pb.TokenizeResponse.FromString)
    raw = pb.TokenizeRequest(text="PLACEHOLDER").SerializeToString().replace(b"PLACEHOLDER", b"PLACE\xc3\x28HOLD")
    with pytest.raises(grpc.RpcError) as e:
        call(raw, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("text")


def test_prompt_larger_than_pool_is_out_of_range(server):
    ids = server.stub.Tokenize(pb.TokenizeRequest(text=long_prompt(80)), timeout=10).token_ids
    assert 1800 < len(ids) <= 2500, len(ids)
    with pytest.raises(grpc.RpcError) as e:
        generate(server.stub, token_ids=pb.TokenIds(ids=list(ids)), sampling=greedy(4))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE, e.value  # not worth a retry
    assert "pool" in e.value.details()
    # The same prompt fits once pruned (snapkv keeps 128 tokens per layer).
    _, c = generate(server.stub, token_ids=pb.TokenIds(ids=list(ids)), sampling=greedy(2),
                    pruning=pb.PruningParams(policy="snapkv", kv_budget=128))
    assert c.usage.kv_tokens_kept == NUM_LAYERS * 128


def test_rejections_are_counted_and_server_keeps_serving(server):
    before = metrics(server)
    with pytest.raises(grpc.RpcError):
        generate(server.stub, prompt="hi", sampling=S(top_p=7), timeout=10)
    after = metrics(server)
    assert sample(after, "asl_requests", "asl_requests_total", status="invalid_argument") == \
        sample(before, "asl_requests", "asl_requests_total", status="invalid_argument") + 1
    assert_still_serving(server)

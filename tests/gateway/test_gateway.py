"""asl-gateway end to end: the official OpenAI client against asl-gateway in front of a real
asl-server on the default model (fixtures in conftest.py)."""
import json
import socket
import subprocess
import threading
import time

import openai
import pytest
import requests

from conftest import BIN_DIR, Process, free_port

GREEDY = {"temperature": 0, "max_tokens": 12}
ESSAY = (
    "The history of the printing press is often told as the story of one machine, but it is better "
    "understood as the meeting of several older crafts: metal casting, screw presses, inks and paper. "
    "Rivers shape the land they cross in ways that are slow to see, carrying sediment to the sea and "
    "wandering across their plains until a meander is cut off and left behind as a quiet lake. "
)


def test_health_and_models(stack, client):
    r = requests.get(stack.base_url + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    models = client.models.list().data
    assert len(models) == 1
    info = models[0].model_extra["asl"]
    assert info["num_layers"] == 30 and info["kv_blocks_total"] > 0
    assert "asl" in info["policies"]


def test_health_is_503_when_the_backend_is_down(tmp_path):
    port = free_port()
    gw = Process("asl-gateway-dead-backend", [
        str(BIN_DIR / "asl-gateway"), f"--listen=127.0.0.1:{port}", f"--backend=127.0.0.1:{free_port()}"], tmp_path)
    try:
        deadline = time.time() + 30
        while True:
            gw.check_alive()
            try:
                r = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
                break
            except requests.ConnectionError:
                assert time.time() < deadline, gw.log()
                time.sleep(0.1)
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        r = requests.post(f"http://127.0.0.1:{port}/v1/completions",
                          json={"model": "m", "prompt": "Hi", "max_tokens": 2}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "service_unavailable"
    finally:
        gw.stop()


def test_chat_stream_equals_non_stream_under_greedy(client, model):
    messages = [{"role": "user", "content": "Name three colours."}]
    full = client.chat.completions.create(model=model, messages=messages, **GREEDY)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert full.object == "chat.completion" and full.id.startswith("chatcmpl-")
    u = full.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert full.model_extra["asl"]["pruning"]["num_prompt_tokens"] == u.prompt_tokens

    stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    text, finish, usage, roles, asl = "", None, None, [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            text += c.delta.content or ""
            finish = c.finish_reason or finish
        asl = (chunk.model_extra or {}).get("asl") or asl
    assert roles == ["assistant"]
    assert text == choice.message.content
    assert finish == choice.finish_reason
    assert usage.prompt_tokens == u.prompt_tokens and usage.completion_tokens == u.completion_tokens
    assert asl["pruning"]["policy"] == "full"


def test_completions_string_prompt_and_usage(client, model):
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6
    # Streaming gives the same text.
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True,
        extra_body={"ignore_eos": True}) if c.choices)
    assert text == r.choices[0].text


def test_prefix_cache_cached_tokens_in_usage(client, model):  # issue 15
    doc = " ".join(f"Paragraph {i} of the shared document says nothing of note." for i in range(30))
    def ask(q, **extra):
        return client.chat.completions.create(
            model=model, messages=[{"role": "system", "content": doc}, {"role": "user", "content": q}],
            max_tokens=4, temperature=0, extra_body=extra or None)
    ask("First question?")
    r = ask("Second question?")
    assert r.usage.prompt_tokens_details.cached_tokens > r.usage.prompt_tokens // 2
    off = ask("Second question?", cache_prompt=False)
    assert off.usage.prompt_tokens_details.cached_tokens == 0
    assert off.choices[0].message.content == r.choices[0].message.content


def test_completions_token_id_prompt(client, model):
    ids = [1, 504, 3458, 282, 4649, 314]  # sent as is: no BOS is added to token ids
    r = client.completions.create(model=model, prompt=ids, max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == 4
    nested = client.completions.create(model=model, prompt=[ids], max_tokens=4, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert nested.choices[0].text == r.choices[0].text


def test_logprobs(client, model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                       temperature=0, logprobs=True, top_logprobs=2,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 3
    for t in content:
        assert t.token.startswith("token_id:") and t.logprob <= 0
        assert len(t.top_logprobs) == 2
        # Greedy: the sampled token is the most likely one.
        assert t.top_logprobs[0].token == t.token


def test_asl_pruning_report_for_a_long_prompt(client, model):
    prompt = ESSAY * 12  # ~1k tokens
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=4, temperature=0,
        extra_body={"ignore_eos": True,
                    "pruning": {"policy": "asl", "kv_budget": 256, "select_k": 256, "max_layer": 20,
                                "detailed_report": True}})
    asl = r.model_extra["asl"]
    p = asl["pruning"]
    assert p["policy"] == "asl"
    assert p["num_prompt_tokens"] == r.usage.prompt_tokens > 600
    assert p["num_kv_tokens_full"] == 30 * p["num_prompt_tokens"]
    assert p["num_kv_tokens_kept"] <= 30 * 256 < p["num_kv_tokens_full"]
    assert p["outcome"] in ("selected", "forced")
    assert 0 <= p["selection_layer"] <= 20
    assert p["num_propagated_tokens"] <= 256
    assert len(p["variance_ratios"]) > 0
    assert asl["kv_tokens_kept"] == p["num_kv_tokens_kept"]
    assert asl["timings"]["ttft_seconds"] > 0


@pytest.mark.parametrize("kwargs,param", [
    ({"temperature": 5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"n": 2}, "n"),
    ({"top_p": 1.5}, "top_p"),              # range checked by asl-server, named by the gateway
    ({"max_tokens": 0}, "max_tokens"),
    ({"extra_body": {"pruning": {"policy": "nope"}}}, "pruning.policy"),
    ({"extra_body": {"pruning": {"taux": 0.1}}}, "pruning.taux"),
    ({"stop": 3}, "stop"),
])
def test_bad_parameters_are_400_naming_the_field(client, model, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], **kwargs)
    assert e.value.status_code == 400
    assert e.value.param == param
    assert param in e.value.message
    assert e.value.type == "invalid_request_error"


@pytest.mark.parametrize("body,param", [
    (b'{"model": "m", "messages": [', None),                  # malformed JSON
    (b'[1, 2]', None),                                        # not an object
    (b'{"model": "m"}', "messages"),                          # missing field
    (b'{"messages": [{"role": "user", "content": "Hi"}]}', "model"),
    (b'{"model": "m", "messages": [{"content": "Hi"}]}', "messages[0].role"),
    # Issue 18 D1: a `type` of the wrong JSON type was an HTTP 500
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": 5, "text": "hi"}]}]}',
     "messages[0].content[0].type"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": null, "text": "hi"}]}]}',
     "messages[0].content[0].type"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": [1]}}',
     "response_format.type"),
])
def test_malformed_bodies_are_400(stack, body, param):
    r = requests.post(stack.base_url + "/v1/chat/completions", data=body,
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param
    if param:
        assert param in err["message"]


def test_stream_errors_before_the_first_token_keep_their_status(stack, model):
    r = requests.post(stack.base_url + "/v1/completions", timeout=30, json={
        "model": model, "prompt": "Hi", "stream": True, "pruning": {"policy": "nope"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "pruning.policy"


def test_unknown_route_is_404_json(stack):
    r = requests.get(stack.base_url + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/v1/chat/completions", "POST"), ("DELETE", "/v1/completions", "POST"),
    ("POST", "/health", "GET, HEAD"), ("PUT", "/v1/models", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow(stack, method, path, allow):  # issue 18 D6
    r = requests.request(method, stack.base_url + path, timeout=10)
    assert r.status_code == 405, r.text
    assert r.headers["Allow"] == allow
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_request_that_can_never_fit_the_pool_is_400_not_429(client, model):
    # 4 + 7000 tokens of full KV need 30 x 438 = 13140 blocks, the stack's pool has 10922 (128 MiB of
    # float16 KV): a 429 would make the client retry what can never run.
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="Hi", max_tokens=7000)
    assert e.value.status_code == 400
    assert e.value.code == "context_length_exceeded"
    assert e.value.param == "prompt"
    assert "pool" in e.value.body["message"]


def test_full_queue_is_429_with_retry_after(one_seat_stack):
    # One request runs, one waits; a third is refused at once with a 429 that tells the client when
    # to try again (OpenAI's clients honour Retry-After).
    url = one_seat_stack.base_url + "/v1/completions"
    body = {"model": "m", "prompt": "Go on.", "max_tokens": 1000, "stream": True, "ignore_eos": True}
    running = requests.post(url, json=body, stream=True, timeout=300)
    lines = running.iter_lines()  # kept: a dropped iterator closes the connection, which cancels
    assert next(line for line in lines if line.startswith(b"data: "))  # it runs
    # The second one waits in the engine's queue; its call blocks until it runs, so in a thread.
    second = []
    waiting = threading.Thread(target=lambda: second.append(requests.post(url, timeout=300, json={
        "model": "m", "prompt": "Hi", "max_tokens": 3, "ignore_eos": True})), daemon=True)
    waiting.start()
    deadline = time.time() + 60
    while one_seat_stack.metric("asl_requests_waiting") != 1:
        assert time.time() < deadline, f"the second request never showed as waiting: {second}"
        time.sleep(0.05)
    refused = requests.post(url, json={"model": "m", "prompt": "Hi", "max_tokens": 1}, timeout=60)
    assert refused.status_code == 429, refused.text
    assert refused.headers.get("Retry-After") == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    running.close()  # the client leaves: the gateway cancels it, and the waiting one runs
    waiting.join(120)
    assert second and second[0].status_code == 200, second


def test_too_long_chat_is_context_length_exceeded(client, model):  # issue 18 D5
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello " * 9000}],
                                       max_tokens=4)
    assert e.value.status_code == 400
    assert e.value.code == "context_length_exceeded"
    assert e.value.param == "messages"
    assert e.value.body["message"].startswith("messages: "), e.value.body


def _wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_client_disconnect_mid_stream_frees_kv_blocks(stack, model):
    assert stack.metric("asl_kv_blocks_used") == 0
    body = json.dumps({"model": model, "prompt": ESSAY, "max_tokens": 1000, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    port = int(stack.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while received.count(b"data: ") < 3:
        data = sock.recv(4096)
        assert data, "the gateway closed the stream early: " + received.decode(errors="replace")
        received += data
    assert received.startswith(b"HTTP/1.1 200")
    # The request is running: it holds KV blocks now.
    assert stack.metric("asl_kv_blocks_used") > 0
    sock.close()
    assert _wait_for(lambda: stack.metric("asl_kv_blocks_used") == 0, timeout=30), stack.logs()[-3000:]
    assert _wait_for(lambda: stack.metric("asl_requests_running") == 0, timeout=10)


def test_client_disconnect_during_a_non_streamed_request_cancels_it(stack, model):  # issue 18 D2
    assert _wait_for(lambda: stack.metric("asl_kv_blocks_used") == 0, timeout=30)
    # 2500 tokens (4700 of the pool's 5461 blocks) take over 30 s here: only the cancel can free the
    # blocks within the wait.
    body = json.dumps({"model": model, "prompt": "Once upon a time", "max_tokens": 2500, "temperature": 0,
                       "ignore_eos": True}).encode()
    port = int(stack.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert _wait_for(lambda: stack.metric("asl_kv_blocks_used") > 0, timeout=60), stack.logs()[-3000:]
    sock.close()
    assert _wait_for(lambda: stack.metric("asl_kv_blocks_used") == 0, timeout=15), stack.logs()[-3000:]
    assert _wait_for(lambda: stack.metric("asl_requests_running") == 0, timeout=10)


def test_requests_stream_closed_early_frees_kv_blocks(stack, model):
    with requests.post(stack.base_url + "/v1/chat/completions", stream=True, timeout=120, json={
            "model": model, "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 1000, "ignore_eos": True, "stream": True}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith(b"data: "):
                seen += 1
                if seen == 3:
                    break
    assert _wait_for(lambda: stack.metric("asl_kv_blocks_used") == 0, timeout=30), stack.logs()[-3000:]


def test_loadtest_smoke(stack, tmp_path):
    out = tmp_path / "loadtest.json"
    proc = subprocess.run([
        str(BIN_DIR / "asl-loadtest"), f"--target={stack.grpc_address}", "--concurrency=4", "--num-requests=10",
        "--prompt-tokens=64", "--max-tokens=8", "--warmup=0", "--seed=7", "--slo-ttft=600000",
        "--policy=full", f"--json={out}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ttft" in proc.stdout
    result = json.loads(out.read_text())
    s = result["summary"]
    assert s["num_requests"] == 10 and s["completed"] == 10 and s["failed"] == 0 and s["errors"] == {}
    assert s["total_output_tokens"] == 80 and s["total_prompt_tokens"] == 640
    assert s["good_requests"] == 10
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        d = s[key]
        assert 0 < d["p50"] <= d["p90"] <= d["p99"] <= d["max"], key
    assert s["ttft_ms"]["p99"] <= s["e2e_ms"]["max"]
    assert s["request_throughput"] > 0 and s["output_token_throughput"] > 0
    assert len(result["requests"]) == 10
    assert all(r["ok"] and r["output_tokens"] == 8 and r["prompt_tokens"] == 64 for r in result["requests"])
    assert result["config"]["concurrency"] == 4


def test_loadtest_openai_mode_smoke(stack, tmp_path):
    """asl-loadtest --api openai through the gateway, on token ids saved from the gRPC tokenizer."""
    prompts, out = tmp_path / "prompts.json", tmp_path / "loadtest_openai.json"
    proc = subprocess.run([
        str(BIN_DIR / "asl-loadtest"), f"--target={stack.grpc_address}", "--prompt-tokens=64", "--num-requests=4",
        "--seed=7", f"--save-prompts={prompts}", "--prompts-only"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = json.loads(prompts.read_text())["prompts"]
    assert len(ids) == 4 and all(len(p) == 64 for p in ids)
    proc = subprocess.run([
        str(BIN_DIR / "asl-loadtest"), "--api=openai", f"--target={stack.base_url}", f"--prompt-ids={prompts}",
        "--concurrency=2", "--num-requests=4", "--max-tokens=8", "--warmup=0", "--policy=full", f"--json={out}"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    s = result["summary"]
    assert s["completed"] == 4 and s["errors"] == {}
    assert s["total_output_tokens"] == 32 and s["total_prompt_tokens"] == 256
    assert s["itl_ms"]["count"] == 4 * 7  # one SSE chunk per token here
    assert 0 < s["ttft_ms"]["p50"] <= s["e2e_ms"]["max"]
    body = result["config"]["request_body"]
    assert body["cache_prompt"] is False and body["ignore_eos"] is True and body["pruning"] == {"policy": "full"}
    assert all(r["ok"] and r["kv_tokens_full"] > 0 for r in result["requests"])

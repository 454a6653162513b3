#!/usr/bin/env python3
"""Writes the committed seed corpora of tests/fuzz/corpus/<target>/ from the project's own test
inputs (run from the repository root with the .venv: `.venv/bin/python tests/fuzz/make_seeds.py`).

  gguf           metadata.gguf and quants.gguf of tests/python/make_tiny_models.py (every value type,
                 several tensor types), and the first 60 KB of its tiny llama.gguf (header, tokenizer
                 arrays and tensor infos; the data is cut, so Open rejects it after the header)
  safetensors    small files with F32/F16/BF16/I64 tensors, and the tiny HF model's header
  tokenizer_json the hand-written tokenizer.json (+ tokenizer_config.json) of tests/tokenizer
  chat_template  the SmolLM2, Qwen2 and Llama 3 templates of tests/tokenizer/chat_template_tests.cpp
  openai_request request bodies of tests/gateway/gateway_tests.cpp
  request_convert serialized asl.v1.GenerateRequest messages (protoc --encode)
Files named regress-* (inputs of fixed findings, bench/results/fuzz.md) are kept.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte <-> unicode table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def gguf_seeds():
    tmp = tempfile.mkdtemp()
    subprocess.run([sys.executable, os.path.join(ROOT, "tests/python/make_tiny_models.py"), tmp], check=True,
                   stdout=subprocess.DEVNULL)
    for name in ("metadata.gguf", "quants.gguf"):
        put("gguf", name, open(os.path.join(tmp, name), "rb").read())
    put("gguf", "llama_head.gguf", open(os.path.join(tmp, "llama.gguf"), "rb").read()[:60000])
    st = open(os.path.join(tmp, "llama_hf", "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", st[:8])[0]
    put("safetensors", "tiny_llama_header.safetensors", st[:8 + n])
    shutil.rmtree(tmp)


def safetensors_file(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    put("safetensors", "small.safetensors", safetensors_file([
        ("a", "F32", [2, 3], struct.pack("<6f", *range(6))),
        ("b", "F16", [4], struct.pack("<4e", 0.5, -1, 2, 65504)),
        ("c", "BF16", [2, 2], b"\x80\x3f\x00\x40\x00\xc0\x00\x00"),
        ("d", "I64", [1], struct.pack("<q", 7)),
        ("e", "F32", [0], b""),
    ]))
    put("safetensors", "scalar.safetensors", safetensors_file([("s", "F32", [], struct.pack("<f", 1.5))]))


def cxx_strings(path, start, end):
    """The C++ string literals between two markers of a test file, concatenated per statement."""
    text = open(path, encoding="utf-8").read()
    return text[text.index(start):text.index(end)]


def unescape(lit):
    return bytes(lit, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")


def tokenizer_seeds():
    src = open(os.path.join(ROOT, "tests/tokenizer/tokenizer_tests.cpp"), encoding="utf-8").read()
    body = src[src.index('std::ofstream(dir / "tokenizer.json") << R"(') :]
    parts = re.findall(r'R"\((.*?)\)"', body[: body.index("auto spec")], re.S)
    # parts: tokenizer.json head, tokenizer.json tail (the vocab goes between), tokenizer_config.json
    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    b2u = bytes_to_unicode()
    vocab = ",".join(json.dumps(b2u[b]) + ": " + str(b) for b in range(256))
    vocab += ', "he": 256, "ll": 257, "hell": 258, "hello": 259'
    tok = parts[0] + vocab + parts[1]
    json.loads(tok)
    put("tokenizer_json", "handwritten.json", tok + "\n--config--\n" + parts[2])
    put("tokenizer_json", "handwritten_noconfig.json", tok)
    put("tokenizer_json", "unigram.json", '{"model": {"type": "Unigram", "vocab": []}}')


def chat_template_seeds():
    src = open(os.path.join(ROOT, "tests/tokenizer/chat_template_tests.cpp"), encoding="utf-8").read()
    msgs = "system\x1fBe brief.\x1euser\x1f Hello \x1eassistant\x1fHi!\x1euser\x1f\xe2\x9c\x93"
    for name in ("kSmolLM2Template", "kQwen2Template", "kLlama3Template"):
        decl = src[src.index("const std::string " + name): ]
        decl = decl[: decl.index(";\n")]
        jinja = "".join(unescape(s) for s in re.findall(r'"((?:[^"\\]|\\.)*)"', decl))
        put("chat_template", name[1:] + ".txt", jinja + "\n--messages--\n" + msgs)
    put("chat_template", "plain.txt", "{{ messages }}\n--messages--\nuser\x1fx")
    # Request-side JSON the target passes to the templates: tools, kwargs, a tool call's arguments.
    tools = '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]'
    put("chat_template", "tools.txt", "\n--messages--\ntools\x1f" + tools + "\x1ekwargs\x1f{\"enable_thinking\": false}"
        "\x1euser\x1fWeather?\x1eassistant\x1f{\"city\": \"Paris\"}\x1etool\x1f21C<|im_end|>")
    # Numbers outside int64 (the Jinja engine's integer view of them was undefined behaviour).
    put("chat_template", "numbers.txt", "\n--messages--\nkwargs\x1f{\"a\": 1e300, \"b\": -9223372036854775809}"
        "\x1eassistant\x1f{\"n\": 9223372036854775807, \"f\": -1e308}\x1euser\x1fx")


def openai_seeds():
    src = open(os.path.join(ROOT, "tests/gateway/gateway_tests.cpp"), encoding="utf-8").read()
    n = 0
    for lit in re.findall(r'R"\((.*?)\)"', src, re.S):
        if lit.lstrip().startswith("{") and lit.rstrip().endswith("}"):
            try:
                json.loads(lit)
            except ValueError:
                continue
            put("openai_request", "gateway_tests_%02d.json" % n, lit)
            n += 1
    put("openai_request", "chat_parts.json", json.dumps({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}]}], "response_format": {"type": "text"},
        "stream": True, "stream_options": {"include_usage": True}, "logprobs": True, "top_logprobs": 2}))
    put("openai_request", "structured.json", json.dumps({"model": "m", "messages": [{"role": "user", "content": "a"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "parallel_tool_calls": False,
        "structured_outputs": {"choice": ["a", "b"]}, "response_format": {"type": "json_schema", "json_schema": {
            "name": "n", "schema": {"type": "object", "properties": {"x": {"type": "integer"}}}}}}))


def request_convert_seeds():
    texts = {
        "prompt": 'prompt: "hello world" sampling { max_tokens: 8 temperature: 0.5 stop: "ll" } '
                  'pruning { policy: "asl" tau: 0.3 kv_budget: 32 select_k: 16 }',
        "chat": 'chat { messages { role: "system" content: "S" } messages { role: "user" content: "hi" } } '
                'add_generation_prompt: true sampling { top_k: 3 top_p: 0.9 min_p: 0.05 seed: 7 logprobs: 2 }',
        "structured": 'prompt: "x" sampling { structured_output { json_schema: "{\\"type\\": \\"integer\\"}" } }',
        "token_ids": 'token_ids { ids: 1 ids: 2 ids: 260 } sampling { stop_token_ids: 2 ignore_eos: true '
                     'repetition_penalty: 1.1 presence_penalty: 0.2 frequency_penalty: 0.1 } '
                     'pruning { policy: "snapkv" window: 4 kernel: 3 pooling: "max" kv_budget: 8 }',
        "gemfilter": 'prompt: "x" pruning { policy: "gemfilter" select_layer: 2 select_k: 4 } '
                     'detailed_pruning_report: true cache_prompt: false add_bos: false request_id: "r"',
        "fastkv": 'prompt: "hello" pruning { policy: "fastkv" select_layer: 1 select_k: 2 min_layer: 1 '
                  'obs_layers: 1 max_layer: 3 }',
    }
    for name, text in texts.items():
        raw = subprocess.run(["protoc", "--proto_path=" + os.path.join(ROOT, "proto"),
                              "--encode=asl.v1.GenerateRequest", "asl/v1/generation.proto"],
                             input=text.encode(), stdout=subprocess.PIPE, check=True).stdout
        put("request_convert", name + ".pb", raw)


if __name__ == "__main__":
    for t in os.listdir(OUT) if os.path.isdir(OUT) else []:
        for f in os.listdir(os.path.join(OUT, t)):
            if not f.startswith("regress-"):
                os.remove(os.path.join(OUT, t, f))
    gguf_seeds()
    safetensors_seeds()
    tokenizer_seeds()
    chat_template_seeds()
    openai_seeds()
    request_convert_seeds()
    for t in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, t))
        print(t, len(files), "files", sum(os.path.getsize(os.path.join(OUT, t, f)) for f in files), "bytes")

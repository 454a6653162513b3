#!/usr/bin/env python3
"""Prefix cache benchmark (issue 15): TTFT of prompts that share a long prefix, with the prefix cache
and without it, per policy, against llama.cpp's llama-server with its prompt cache, in one run.

Both servers are driven the same way: the official OpenAI client, streamed chat completions, one
request at a time (closed loop), TTFT measured by the client (request sent -> first content chunk).
Every prompt is sent twice in a row, once with the cache and once without (`cache_prompt: false`, a
request field both servers accept), alternating which goes first, so the machine's noise hits both.

Workloads:
  (a) system: a ~2k-token system prompt + --questions different short questions;
  (b) chat:   a --turns-turn chat over a ~3k-token document (turn t = turns before it, their answers
              and a new question), so turn t can reuse turn t-1's prompt and generated answer.
The target of issue 15: TTFT on a hit <= 0.15x a miss for full and snapkv at a 2k prefix.

  bash bench/llamacpp.sh     # once: llama-server
  .venv/bin/python bench/prefix_cache.py --out bench/results/prefix_cache.md
"""
import argparse
import time
from pathlib import Path

import openai

from bench_common import LLAMA_SERVER, conftest, llama_server, results_header


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")


def chat(client, model, messages, cache, max_tokens, extra):
    """-> (text, ttft seconds, cached tokens or None)"""
    body = dict(extra, cache_prompt=cache)
    t0 = time.perf_counter()
    ttft, text, cached = None, "", None
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True}, extra_body=body)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - t0
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            details = getattr(chunk.usage, "prompt_tokens_details", None)
            cached = getattr(details, "cached_tokens", None) if details else None
        timings = getattr(chunk, "timings", None) or (chunk.model_extra or {}).get("timings")
        if timings and cached is None:
            cached = timings.get("cache_n")
    return text, (ttft if ttft is not None else time.perf_counter() - t0), cached


def run_workloads(client, model, extra, args, label, rows):
    system = " ".join(f"Rule {i}: when asked about topic {i}, answer in one short sentence and cite rule {i}."
                      for i in range(100))
    doc = " ".join(f"Section {i}. The committee met on day {i} and recorded {i * 3} items, of which {i % 7} were "
                   f"deferred to the next meeting." for i in range(95))
    for workload in ("system", "chat"):
        hit, miss, cached = [], [], []
        if workload == "system":
            chat(client, model, [{"role": "system", "content": system}, {"role": "user", "content": "Topic 0?"}],
                 True, 4, extra)  # warm the cache with the system prompt
            for q in range(args.questions):
                msgs = [{"role": "system", "content": system},
                        {"role": "user", "content": f"What do you say about topic {q + 1}?"}]
                for cache in ((True, False) if q % 2 == 0 else (False, True)):
                    _, ttft, c = chat(client, model, msgs, cache, 8, extra)
                    (hit if cache else miss).append(ttft)
                    if cache and c is not None:
                        cached.append(c)
        else:
            msgs = [{"role": "system", "content": "Answer questions about this document.\n" + doc}]
            for t in range(args.turns):
                msgs.append({"role": "user", "content": f"Question {t + 1}: how many items were recorded on day "
                                                        f"{t * 7 + 3}?"})
                order = (True, False) if t % 2 == 0 else (False, True)
                answer = None
                for cache in order:
                    text, ttft, c = chat(client, model, msgs, cache, 16, extra)
                    if cache:
                        answer = text
                    if t > 0:  # turn 1 has nothing to hit
                        (hit if cache else miss).append(ttft)
                        if cache and c is not None:
                            cached.append(c)
                msgs.append({"role": "assistant", "content": answer})
        row = dict(server=label, workload=workload, n=len(hit), cached=pct(cached, 0.5) if cached else None,
                   hit50=pct(hit, 0.5), hit99=pct(hit, 0.99), miss50=pct(miss, 0.5), miss99=pct(miss, 0.99))
        row["ratio"] = row["hit50"] / row["miss50"]
        rows.append(row)
        print(row, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", nargs="+", default=["full", "snapkv", "asl"])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-server", default=LLAMA_SERVER)
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logs = Path("/tmp/asl_prefix_bench")
    logs.mkdir(exist_ok=True)
    rows = []
    with conftest.start_stack(logs, f"--model.threads={args.threads}", "--kv_cache.bytes=1GiB",
                              "--server.max_prompt_tokens=8000") as stack:
        client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        for policy in args.policies:
            run_workloads(client, model, {"pruning": {"policy": policy}}, args, f"asl-serve {policy}", rows)
    llama_version = "(not run)"
    if not args.no_llama:
        with llama_server(args.llama_server, args.threads, 1, 8192, logs) as (base, llama_version):
            client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
            run_workloads(client, "default", {}, args, "llama-server (cache_prompt)", rows)
    lines = ["| server | workload | hit requests | cached tokens (p50) | TTFT hit p50 / p99 (s) | TTFT miss p50 / p99 (s) "
             "| hit / miss (p50) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cached = "-" if r["cached"] is None else f"{r['cached']:.0f}"
        lines.append(f"| {r['server']} | {r['workload']} | {r['n']} | {cached} | {r['hit50']:.3f} / {r['hit99']:.3f} | "
                     f"{r['miss50']:.3f} / {r['miss99']:.3f} | {r['ratio']:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        what = (f"threads {args.threads}, default model (SmolLM2-135M-Instruct Q4_1), asl-serve float16 KV; "
                f"llama-server {llama_version}")
        Path(args.out).write_text(results_header("prefix_cache.py", what) + table + "\n")

if __name__ == "__main__":
    main()

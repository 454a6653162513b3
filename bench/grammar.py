#!/usr/bin/env python3
"""Structured output benchmark: what a grammar costs per token, at 1 and at 16 concurrent streams,
and what compiling a new schema costs, for asl-serve (xgrammar) and llama.cpp's llama-server (its
GBNF sampler) on the same model, threads and requests, in one run.

Both servers take the same request bodies: streamed /v1/completions with `grammar` (GBNF) or
`json_schema` (an object) at the top level, llama-server's own fields, which asl-gateway also
accepts. Every stream generates exactly --tokens tokens (ignore_eos; the grammars cannot complete
sooner), so constrained and free runs do the same work but for the masks. Modes alternate within
each repeat (free, regex, json, then the reverse order), and the table shows medians over repeats.

  decode tok/s   all streams' tokens / wall time from the first request sent to the last token;
  TPOT           per stream, (last token - first token) / (tokens - 1), median over streams;
  mixed          (streams > 1) half the streams json, half free: the TPOT shown is the free
                 streams', against all-free (what a grammar beside them costs requests without one);
  compile        TTFT of a request with a schema never seen (a fresh "description" defeats the
                 caches) minus TTFT of the same request repeated (cached), medians of --compiles.

  bash bench/llamacpp.sh     # once: llama-server
  .venv/bin/python bench/grammar.py --out bench/results/grammar.md
"""
import argparse
import concurrent.futures as cf
import json
import statistics
import time
import urllib.request
from pathlib import Path

from bench_common import LLAMA_SERVER, conftest, llama_server, results_header

PROMPT = "Here is a long story about a lighthouse keeper and the sea:"
# Neither can complete within --tokens tokens (1500 characters; a JSON string of >= 1500).
MODES = {
    "free": {},
    "regex": {"grammar": 'root ::= [a-z ,.]{1500}'},
    "json": {"json_schema": {"type": "object", "properties": {"story": {"type": "string", "minLength": 1500}},
                             "required": ["story"]}},
}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}, "tags": {"type": "array",
                                                                                "items": {"type": "string"}}},
          "required": ["name", "age", "city"]}


def stream(base, body):
    """One streamed completion -> (send time, [token arrival times], text)."""
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(dict(body, stream=True)).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    times, text = [], ""
    with urllib.request.urlopen(req, timeout=900) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(ev)
            for c in ev.get("choices", []):
                piece = c.get("text") or ""
                if piece or c.get("finish_reason") is None:
                    times.append(time.perf_counter())
                    text += piece
    return t0, times, text


def run_mode(base, model, mode, streams, tokens, seed):
    """mode "mixed": even streams json, odd streams free; its TPOT is the free streams' (what
    constrained batch-mates cost requests without a grammar)."""
    def body(i):
        m = mode if mode != "mixed" else ("json" if i % 2 == 0 else "free")
        return dict(model=model, prompt=PROMPT, max_tokens=tokens, temperature=0.8, seed=seed + i, ignore_eos=True,
                    n_predict=tokens, cache_prompt=False, **MODES[m])
    with cf.ThreadPoolExecutor(streams) as ex:
        results = list(ex.map(lambda i: stream(base, body(i)), range(streams)))
    start = min(r[0] for r in results)
    end = max(r[1][-1] for r in results if r[1])
    n = sum(len(r[1]) for r in results)
    timed = [r for i, r in enumerate(results) if mode != "mixed" or i % 2 == 1]
    tpot = statistics.median((r[1][-1] - r[1][0]) / (len(r[1]) - 1) for r in timed if len(r[1]) > 1)
    return n / (end - start), tpot, n / streams


def compile_cost(base, model, repeats):
    """Median TTFT of a never-seen schema minus that of the same schema repeated, seconds."""
    fresh, cached = [], []
    for i in range(repeats):
        schema = dict(PERSON, description=f"run {time.time_ns()} {i}")
        body = dict(model=model, prompt="A person as JSON:", max_tokens=1, n_predict=1, temperature=0,
                    cache_prompt=False, json_schema=schema)
        for bucket in (fresh, cached):
            t0, times, _ = stream(base, body)
            bucket.append(times[0] - t0)
    return statistics.median(fresh) - statistics.median(cached), statistics.median(cached)


def bench_server(label, base, model, args, rows):
    for streams in args.streams:
        modes = list(MODES) + (["mixed"] if streams > 1 else [])
        per_mode = {m: [] for m in modes}
        for rep in range(args.repeats):
            order = modes if rep % 2 == 0 else list(reversed(modes))
            for mode in order:
                per_mode[mode].append(run_mode(base, model, mode, streams, args.tokens, seed=100 * rep))
        free_tps = statistics.median(r[0] for r in per_mode["free"])
        free_tpot = statistics.median(r[1] for r in per_mode["free"])
        for mode, res in per_mode.items():
            tps = statistics.median(r[0] for r in res)
            tpot = statistics.median(r[1] for r in res)
            row = dict(server=label, streams=streams, mode=mode, tps=tps, tpot=tpot * 1000,
                       tokens=statistics.median(r[2] for r in res), rel=tps / free_tps, dtpot=(tpot - free_tpot) * 1000)
            rows.append(row)
            print(row, flush=True)
    extra, ttft = compile_cost(base, model, args.compiles)
    rows.append(dict(server=label, compile=extra * 1000, cached_ttft=ttft * 1000))
    print(rows[-1], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compiles", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-server", default=LLAMA_SERVER)
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logs = Path("/tmp/asl_grammar_bench")
    logs.mkdir(exist_ok=True)
    rows = []
    with conftest.start_stack(logs, f"--model.threads={args.threads}", "--kv_cache.bytes=512MiB",
                                gateway_threads=2 * max(args.streams) + 8) as stack:
        with urllib.request.urlopen(stack.base_url + "/v1/models", timeout=30) as r:
            model = json.load(r)["data"][0]["id"]
        bench_server("asl-serve (xgrammar)", stack.base_url, model, args, rows)
    llama_version = "(not run)"
    if not args.no_llama:
        slots = max(args.streams)
        with llama_server(args.llama_server, args.threads, slots, slots * 1024, logs) as (base, llama_version):
            bench_server("llama-server (GBNF)", base, "default", args, rows)
    lines = ["| server | streams | mode | tokens/stream | decode tok/s | vs free | TPOT p50 (ms) | TPOT - free (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "mode" in r:
            lines.append(f"| {r['server']} | {r['streams']} | {r['mode']} | {r['tokens']:.0f} | {r['tps']:.1f} | "
                         f"{r['rel']:.2f}x | {r['tpot']:.1f} | {r['dtpot']:+.1f} |")
    lines += ["", "| server | compile a new schema (ms, TTFT fresh - cached) | TTFT cached (ms) |", "|---|---|---|"]
    for r in rows:
        if "compile" in r:
            lines.append(f"| {r['server']} | {r['compile']:.1f} | {r['cached_ttft']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        what = (f"threads {args.threads}, default model (SmolLM2-135M-Instruct Q4_1), {args.tokens} tokens per stream, "
                f"medians of {args.repeats} repeats; llama-server {llama_version}")
        Path(args.out).write_text(results_header("grammar.py", what) + table + "\n")

if __name__ == "__main__":
    main()

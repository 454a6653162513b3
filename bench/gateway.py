#!/usr/bin/env python3
"""The OpenAI gateway's cost and capacity (issue 17 item 5), against one asl-server:

  1. overhead: asl-loadtest at --concurrency C (default 64) straight to asl-server's gRPC Generate
     and through asl-gateway's streaming /v1/completions, same prompt ids, alternating A/B, --reps
     times; TTFT, TPOT, ITL and output throughput per run;
  2. capacity: N concurrent SSE streams opened at once against a gateway with --threads T: how many
     are served (200) and how many get 429 gateway_at_capacity, and how long the 429s took.

Writes bench/results/gateway.md (and raw JSON under bench/out/gateway/).
  .venv/bin/python bench/gateway.py [--concurrency 64] [--reps 3] [--streams 260] [--threads 256]
"""
import argparse
import concurrent.futures
import datetime
import json
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving  # noqa: E402  (Server, wait_healthy, commit)

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def loadtest(bin_dir, api, target, prompts, a, out):
    cmd = [str(bin_dir / "asl-loadtest"), f"--api={api}", f"--target={target}", f"--prompt-ids={prompts}",
           f"--concurrency={a.concurrency}", f"--num-requests={a.requests}", f"--max-tokens={a.max_tokens}",
           "--warmup=2", f"--json={out}"]
    serving.subprocess.run(cmd, check=True, stdout=serving.subprocess.DEVNULL, stderr=serving.subprocess.DEVNULL)
    return json.loads(Path(out).read_text())["summary"]


def capacity(base_url, n, max_tokens):
    """Opens n streams at once; returns (statuses, seconds to each 429's answer)."""
    body = {"model": "m", "prompt": "Count:", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "temperature": 0}

    def one(_):
        t0 = time.time()
        with requests.post(base_url + "/v1/completions", json=body, stream=True, timeout=600) as r:
            if r.status_code != 200:
                return r.status_code, time.time() - t0
            for _ in r.iter_lines():
                pass
            return 200, time.time() - t0

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    return [s for s, _ in results], [t for s, t in results if s == 429]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=str(ROOT / "build" / "bin"))
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--streams", type=int, default=260)
    ap.add_argument("--threads", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gateway.md"))
    a = ap.parse_args()
    bin_dir = Path(a.bin_dir)
    work = ROOT / "bench" / "out" / "gateway"
    work.mkdir(parents=True, exist_ok=True)
    grpc_port, metrics_port, http_port = free_port(), free_port(), free_port()
    server = serving.Server("asl-server", [
        str(bin_dir / "asl-server"), f"--model.path={a.model}", f"--server.grpc_port={grpc_port}",
        f"--server.metrics_port={metrics_port}", "--kv_cache.bytes=1GiB", "--scheduler.max_num_seqs=64"], work)
    gateway = serving.Server("asl-gateway", [
        str(bin_dir / "asl-gateway"), f"--listen=127.0.0.1:{http_port}", f"--backend=127.0.0.1:{grpc_port}",
        f"--threads={a.threads}"], work)
    base = f"http://127.0.0.1:{http_port}"
    try:
        serving.wait_healthy(base + "/health", [server, gateway], 120)
        prompts = work / "prompts.json"
        serving.subprocess.run([str(bin_dir / "asl-loadtest"), f"--target=127.0.0.1:{grpc_port}",
                                f"--prompt-tokens={a.prompt_tokens}", f"--num-requests={a.requests}",
                                f"--save-prompts={prompts}", "--prompts-only"], check=True,
                               stdout=serving.subprocess.DEVNULL)
        runs = {"grpc": [], "openai": []}
        for rep in range(a.reps):
            order = ["grpc", "openai"] if rep % 2 == 0 else ["openai", "grpc"]
            for api in order:
                target = f"127.0.0.1:{grpc_port}" if api == "grpc" else base
                s = loadtest(bin_dir, api, target, prompts, a, work / f"{api}_{rep}.json")
                runs[api].append(s)
                serving.log(f"rep {rep} {api}: TTFT p50 {s['ttft_ms']['p50']:.0f} ms, TPOT p50 "
                            f"{s['tpot_ms']['p50']:.1f} ms, {s['output_token_throughput']:.1f} tok/s")
        statuses, refused_s = capacity(base, a.streams, a.max_tokens)
    finally:
        gateway.stop()
        server.stop()

    def med(api, key, sub=None):
        vals = [r[key][sub] if sub else r[key] for r in runs[api]]
        return statistics.median(vals), min(vals), max(vals)

    rows = []
    for label, key, sub, fmt in [("TTFT p50 (ms)", "ttft_ms", "p50", "{:.0f}"), ("TTFT p99 (ms)", "ttft_ms", "p99", "{:.0f}"),
                                 ("TPOT p50 (ms)", "tpot_ms", "p50", "{:.1f}"), ("ITL p99 (ms)", "itl_ms", "p99", "{:.0f}"),
                                 ("output tok/s", "output_token_throughput", None, "{:.1f}")]:
        cells = []
        for api in ("grpc", "openai"):
            m, lo, hi = med(api, key, sub)
            cells.append(f"{fmt.format(m)} ({fmt.format(lo)}-{fmt.format(hi)})")
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    served, refused = statuses.count(200), statuses.count(429)
    cmd = "  .venv/bin/python bench/gateway.py " + " ".join(sys.argv[1:])
    text = f"""# The gateway: overhead against direct gRPC, and capacity

{datetime.date.today()}, commit {serving.commit()}, {platform.node()} ({cpu_name()}, {__import__('os').cpu_count()} CPUs), the default model, one asl-server (`--scheduler.max_num_seqs=64`).

```
{cmd}
```

## Overhead at {a.concurrency} concurrent streams

asl-loadtest, {a.requests} requests of {a.prompt_tokens} prompt tokens (the same ids for both) and {a.max_tokens}
output tokens, {a.concurrency} in flight; `grpc` is asl-server's streaming Generate, `openai` the gateway's
streaming /v1/completions (SSE) in front of the same server. Median of {a.reps} runs per side, alternating
which goes first (min-max in brackets).

| | grpc | openai (gateway) |
|---|---|---|
""" + "\n".join(rows) + f"""

## Capacity

{a.streams} streams of {a.max_tokens} tokens opened at once against `asl-gateway --threads={a.threads}`
(generations take at most {a.threads} - clamp({a.threads}/8, 1, 16) workers): {served} served, {refused} refused with
429 `gateway_at_capacity` (Retry-After: 1){', answered in ' + f'{statistics.median(refused_s):.2f} s median, {max(refused_s):.2f} s max' if refused_s else ''};
other statuses: {sorted(set(statuses) - {200, 429}) or 'none'}.
"""
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Decode TPOT vs context per KV storage dtype, A/B against an older asl-cli, beside llama.cpp.

For each prompt length (essay text, the same token ids everywhere) and repetition, runs in turn:
every `--cli NAME=PATH[:extra args]` variant (`asl-cli generate`, policy full, ignore_eos) and
llama.cpp's `llama-bench -p 0 -n M -d N` (M tokens generated after N of context, f16 KV, its
default), alternating the order between repetitions. Writes a markdown table of median (min-max)
TPOT in ms.
  .venv/bin/python bench/decode_kv.py --lengths 512 2048 4096 --reps 3 --threads 2 \
      --cli "f16=build/bin/asl-cli" "f32=build/bin/asl-cli:--kv-dtype float32" "before=/tmp/old/asl-cli" \
      --llama-bench bench/out/llama.cpp/build/bin/llama-bench --out bench/out/decode_kv.md
"""
import argparse
import json
import statistics
import subprocess
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import latency  # noqa: E402  (prompt_ids, machine, commit)


def asl_tpot_ms(cli, extra, model, ids, max_tokens, threads):
    cmd = [cli, "generate", "--model", model, "--json", "--ids", ",".join(map(str, ids)),
           "--max-tokens", str(max_tokens), "--ignore-eos", "--policy", "full", "--kv-cache", "2GiB",
           "--threads", str(threads), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(" ".join(cmd[:3]) + "\n" + out.stderr[-2000:])
    return json.loads(out.stdout)["timings"]["mean_tpot_seconds"] * 1e3


def llama_tpot_ms(exe, model, n, max_tokens, threads):
    cmd = [exe, "-m", model, "-r", "1", "-o", "json", "-p", "0", "-n", str(max_tokens), "-d", str(n),
           "-t", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(" ".join(cmd) + "\n" + out.stderr[-2000:])
    return 1e3 / json.loads(out.stdout)[0]["avg_ts"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", nargs="+", required=True, help="NAME=PATH[:extra args]")
    ap.add_argument("--model", default=str(latency.ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--essays", default=str(latency.ROOT.parent / "shared" / "data" / "pg-essays"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-bench", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    variants = []
    for spec in a.cli:
        name, rest = spec.split("=", 1)
        path, _, extra = rest.partition(":")
        variants.append((name, path, extra.split()))
    if a.llama_bench:
        variants.append(("llama.cpp Q4_1", None, []))
    first_cli = variants[0][1]
    results = {}
    for n in a.lengths:
        ids = latency.prompt_ids(first_cli, a.model, n, a.essays)
        for rep in range(a.reps):
            order = variants if rep % 2 == 0 else list(reversed(variants))
            for name, path, extra in order:
                if path is None:
                    ms = llama_tpot_ms(a.llama_bench, a.model, n, a.max_tokens, a.threads)
                else:
                    ms = asl_tpot_ms(path, extra, a.model, ids, a.max_tokens, a.threads)
                results.setdefault((n, name), []).append(ms)
                print(f"{n} {name} rep {rep}: {ms:.1f} ms", file=sys.stderr, flush=True)
    base = variants[0][0]
    lines = [
        "| context | variant | TPOT ms median (min-max) | / " + base + " |",
        "|---|---|---|---|",
    ]
    for n in a.lengths:
        b = statistics.median(results[(n, base)])
        for name, _, _ in variants:
            v = results[(n, name)]
            lines.append(f"| {n} | {name} | {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f}) | "
                         f"{statistics.median(v) / b:.2f} |")
    header = [
        f"- machine: {latency.machine()}",
        f"- commit: {latency.commit()}",
        f"- command: `{' '.join(sys.argv)}`",
        "",
    ]
    open(a.out, "w").write("\n".join(header + lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Latency vs context: prefill tokens/s, TTFT and TPOT per policy, default model, this machine.

Runs `asl-cli generate` on essay text cut to each prompt length (same tokens for every policy),
repeats each cell, and writes a markdown table with median/min/max and ratios to `full`. With
`--llama-bench`, the same run also times llama.cpp's `llama-bench` on the given GGUF files at the same
prompt lengths (prefill: `-p N`; decode: `-n M -d N`, i.e. M tokens generated after N tokens of context)
with the same thread count, so both engines are measured on the same machine in the same run.

  .venv/bin/python bench/latency.py --lengths 512 2048 8192 --policies full snapkv fastkv asl \
      --budget 512 --reps 3 --out bench/results/latency.md
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) / 1048576
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def commit():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except Exception:
        return "unknown"


def prompt_ids(cli, model, n, essays):
    text = ""
    for f in sorted(pathlib.Path(essays).glob("*.txt")):
        text += f.read_text() + "\n"
        if len(text) > n * 6:
            break
    out = subprocess.run([cli, "tokenize", "--model", model, "--prompt", text, "--json"],
                         capture_output=True, text=True, check=True)
    ids = json.loads(out.stdout)["token_ids"]
    assert len(ids) >= n, f"not enough essay text for {n} tokens"
    return ids[:n]


def run(cli, model, ids, policy, budget, max_tokens, threads, extra):
    cmd = [cli, "generate", "--model", model, "--json", "--ids", ",".join(map(str, ids)),
           "--max-tokens", str(max_tokens), "--ignore-eos", "--policy", policy,
           "--kv-budget", str(budget if policy != "full" else 0), "--select-k", str(budget),
           "--kv-cache", "2GiB", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


def llama_bench(exe, model, n, max_tokens, reps, threads):
    """llama.cpp prefill tok/s for n prompt tokens, and decode tok/s for max_tokens after n of context."""
    def one(args):
        cmd = [exe, "-m", model, "-r", str(reps), "-o", "json", *args]
        if threads:
            cmd += ["-t", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(" ".join(cmd) + "\n" + out.stderr[-2000:])
        return json.loads(out.stdout)[0]["samples_ts"]
    return one(["-p", str(n), "-n", "0"]), one(["-p", "0", "-n", str(max_tokens), "-d", str(n)])


def cell(n, policy, dtype, res, max_tokens, base):
    """One table row from a cell's repetitions; `base` maps (policy, dtype) -> row (full rows)."""
    prefill = [r["pruning"]["prefill_seconds"] for r in res]
    ttft = [r["timings"]["ttft_seconds"] for r in res]
    tpot = [r["timings"]["mean_tpot_seconds"] for r in res]
    rep = res[0]["pruning"]
    row = dict(n=n, policy=policy, dtype=dtype or "default", prefill=prefill, ttft=ttft, tpot=tpot,
               max_tokens=max_tokens, kv=rep["kv_tokens_kept"], kv_full=rep["kv_tokens_full"],
               kv_bytes=rep["kv_bytes"], layer=rep["selection_layer"], outcome=rep["outcome"])
    if policy == "full":
        base[("full", dtype)] = row
    b = base.get(("full", dtype))
    row["ttft_ratio"] = statistics.median(ttft) / statistics.median(b["ttft"]) if b else float("nan")
    row["tpot_ratio"] = statistics.median(tpot) / statistics.median(b["tpot"]) if b else float("nan")
    print(f"n={n} {policy} {row['dtype']}: prefill {statistics.median(prefill):.3f}s, "
          f"tpot {statistics.median(tpot)*1000:.1f}ms, kv {row['kv']}/{row['kv_full']}", file=sys.stderr)
    return row


def fmt(values, scale=1.0, digits=3):
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default=str(ROOT / "build" / "bin" / "asl-cli"))
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--essays", default=str(ROOT.parent / "shared" / "data" / "pg-essays"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--policies", nargs="+", default=["full", "snapkv", "fastkv", "asl"])
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--context", type=int, default=8192, help="model context (prompt + output)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--llama-bench", default="", help="path to llama.cpp's llama-bench; empty: skip llama.cpp")
    ap.add_argument("--llama-models", nargs="*", default=[],
                    help="LABEL=PATH GGUF files for llama-bench (default: the --model file, labelled by its name)")
    ap.add_argument("--dtypes", nargs="+", default=[],
                    help="compute dtypes to compare (asl-cli --dtype), alternated within each repetition; "
                         "empty: asl-cli's default")
    ap.add_argument("--activations", nargs="+", default=[],
                    help="asl-cli --decode-activations values to compare (float32, int8), crossed with --dtypes")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latency.md"))
    a = ap.parse_args()

    rows, llama_rows = [], []
    for n in a.lengths:
        # The default model's context is 8192: a prompt of n tokens plus the output must fit.
        max_tokens = a.max_tokens
        if n + max_tokens > a.context:
            n = a.context - max_tokens
        ids = prompt_ids(a.cli, a.model, n, a.essays)
        # Variants: every --dtypes value crossed with every --activations value, labelled "dtype/act".
        variants = {}
        for d in a.dtypes or [None]:
            for act in a.activations or [None]:
                label = "/".join(x for x in (d, act) if x) or None
                variants[label] = (["--dtype", d] if d else []) + (["--decode-activations", act] if act else [])
        base = {}
        for policy in a.policies:
            # A/B alternated: rep 1 of every variant, then rep 2, ..., so load drifts hit all alike.
            by_variant = {v: [] for v in variants}
            for _ in range(a.reps):
                for v, args in variants.items():
                    by_variant[v].append(run(a.cli, a.model, ids, policy, a.budget, max_tokens, a.threads,
                                             a.extra + args))
            for v in variants:
                rows.append(cell(n, policy, v, by_variant[v], max_tokens, base))
        if a.llama_bench:
            base = base.get(("full", next(iter(variants))))
            models = a.llama_models or [f"{pathlib.Path(a.model).name}={a.model}"]
            for spec in models:
                label, path = spec.split("=", 1)
                pp, tg = llama_bench(a.llama_bench, path, n, max_tokens, a.reps, a.threads)
                llama_rows.append(dict(n=n, label=label, pp=pp, tg=tg, base=base))
                print(f"n={n} llama.cpp {label}: pp {statistics.median(pp):.0f} tok/s, "
                      f"tg {statistics.median(tg):.1f} tok/s", file=sys.stderr)

    cmd = " ".join([".venv/bin/python", "bench/latency.py"] + sys.argv[1:])
    lines = [
        "# Latency vs context (CPU, default model)", "",
        f"- date: {datetime.date.today()}", f"- commit: {commit()}", f"- machine: {machine()}",
        f"- model: {pathlib.Path(a.model).name}; prefill GEMMs on the dequantised weights in the compute dtype "
        "(float32, or bfloat16-rounded), decode projections on the Q4_1 blocks (variant `/int8`: int8 activations "
        "and integer dot products; `/float32` or none: float32 activations)",
        f"- budget: kv_budget = select_k = {a.budget} for pruning policies; full keeps everything",
        f"- {a.reps} repetitions per cell: median (min-max)", f"- command: `{cmd}`", "",
        "| prompt | policy | dtype / activations | prefill s | prefill tok/s | TTFT s | TPOT ms | decode tok/s | TTFT / full | TPOT / full | KV tokens kept (sum over layers) | KV MiB | selection |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tps = [r["n"] / p for p in r["prefill"]]
        dec = [1.0 / t for t in r["tpot"] if t > 0]
        sel = r["outcome"] if r["layer"] < 0 else f'{r["outcome"]} @ {r["layer"]}'
        lines.append(
            f'| {r["n"]} | {r["policy"]} | {r["dtype"]} | {fmt(r["prefill"])} | {statistics.median(tps):.0f} | {fmt(r["ttft"])} | '
            f'{fmt(r["tpot"], 1000, 1)} | {statistics.median(dec):.1f} | {r["ttft_ratio"]:.2f} | {r["tpot_ratio"]:.2f} | '
            f'{r["kv"]} / {r["kv_full"]} | {r["kv_bytes"] / 1048576:.1f} | {sel} |')
    if llama_rows:
        lines += [
            "", "## llama.cpp on the same machine, same run",
            "", f"`llama-bench` built from the llama.cpp vendored in llama-cpp-python (see bench/llamacpp.sh), "
            f"{a.threads or 'default'} threads, {a.reps} repetitions per cell: median (min-max). Prefill: `-p N -n 0`; "
            f"decode: `-p 0 -n {a.max_tokens} -d N` (generation after N tokens of context), the same positions as "
            "asl-serve's TPOT above. llama.cpp keeps full KV (no pruning).", "",
            "| prompt | engine / weights | prefill s | prefill tok/s | decode tok/s | TPOT ms | asl-serve full TTFT / this | asl-serve full TPOT / this |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in llama_rows:
            pre = [r["n"] / t for t in r["pp"]]
            tpot = [1.0 / t for t in r["tg"]]
            b = r["base"]
            ttft_x = statistics.median(b["ttft"]) / statistics.median(pre) if b else float("nan")
            tpot_x = statistics.median(b["tpot"]) / statistics.median(tpot) if b else float("nan")
            lines.append(
                f'| {r["n"]} | llama.cpp {r["label"]} | {fmt(pre)} | {statistics.median(r["pp"]):.0f} | '
                f'{statistics.median(r["tg"]):.1f} | {fmt(tpot, 1000, 1)} | {ttft_x:.2f} | {tpot_x:.2f} |')
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Serving under load through the OpenAI HTTP API: asl-serve (asl-server + asl-gateway) beside
llama.cpp's llama-server on the same GGUF, same threads, same token ids, same load, in one run
(docs: ../shared/docs/benchmarks.md §B "Peer"; issue 13).

What it does, for one configuration:
  1. starts every server at once and waits for health: one asl-server + asl-gateway per asl
     "variant" (the same binary with different extra flags, e.g. two scheduler settings), and
     llama-server (-t THREADS -tb THREADS, --parallel SLOTS, context SLOTS x (prompt + output),
     continuous batching on, prompt cache off: --no-cache-prompt --cache-ram 0, and
     "cache_prompt": false in every request);
  2. writes the prompts once per prompt length with asl-server's tokenizer
     (asl-loadtest --save-prompts --prompts-only), so every server gets identical token ids;
  3. for each repetition and each load setting (prompt length x concurrency or Poisson rate) runs
     asl-loadtest --api openai against every target in turn (every asl variant x policy, then
     llama-server; the order is reversed on odd repetitions): cell by cell, never one server's
     whole sweep after the other's;
  4. writes raw/*.json (asl-loadtest's per-run JSON), summary.json and results.md (median over
     repetitions, with min-max for throughput and the longest gap) into --out.

  bash bench/llamacpp.sh      # once: builds bench/out/llama.cpp/build/bin/llama-server
  .venv/bin/python bench/serving.py --out bench/out/serving --prompt-tokens 2048 4096 \\
      --concurrency 4 --rate 0.05 --num-requests 16 --policies full asl --kv-budget 512 --select-k 512 \\
      --variant onestep:--scheduler.step_prefill_budget=0 --variant sliced:--scheduler.step_prefill_budget=B \\
      --repeats 3
(B: the per-step prefill budget under test, in token-layers; see asl-server --help.)

A small end-to-end check (a few minutes on 2 cores):
  .venv/bin/python bench/serving.py --out /tmp/serving-smoke --prompt-tokens 128 --concurrency 2 \\
      --rate 0.5 --num-requests 4 --max-tokens 16 --repeats 1 --policies full asl --kv-budget 64 --select-k 64

An interrupted invocation (Ctrl-C, a lost machine) continues with the same arguments plus --resume:
the runs already in raw/ are kept and only the missing ones run. Servers' logs go to --out/logs/.
Ports: --port-base (llama-server), +10, +20, ... (asl variants: gRPC, metrics, HTTP at +0, +1, +2).
Uses only the Python standard library.
"""
import argparse
import datetime
import json
import os
import pathlib
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import latency  # bench/latency.py: machine() and commit()

ROOT = pathlib.Path(__file__).resolve().parents[1]


def log(msg):
    print(f"[serving {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def commit():
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return latency.commit() + (" (working tree differs from it)" if dirty else "")


class Server:
    """A child process with its log in a file; stop() sends SIGTERM, then SIGKILL after a grace."""

    append_logs = False  # --resume: keep the interrupted invocation's logs

    def __init__(self, name, cmd, log_dir):
        self.name, self.cmd = name, cmd
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "a" if Server.append_logs else "w")
        self._log.write(f"=== {datetime.datetime.now():%Y-%m-%d %H:%M:%S} {shlex.join(cmd)}\n")
        self._log.flush()
        log(f"start {name}: {shlex.join(cmd)}")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def alive(self):
        return self.proc.poll() is None

    def tail(self, n=3000):
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, grace=40):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(url, servers, timeout):
    deadline = time.time() + timeout
    while not http_ok(url):
        for s in servers:
            if not s.alive():
                raise RuntimeError(f"{s.name} exited with {s.proc.returncode}:\n{s.tail()}")
        if time.time() > deadline:
            raise RuntimeError(f"{url} not healthy after {timeout} s:\n" + "\n".join(s.tail(1500) for s in servers))
        time.sleep(1)


def parse_variant(spec):
    """NAME:FLAGS (FLAGS split like a shell line; may be empty) -> (name, [flags])."""
    name, _, flags = spec.partition(":")
    if not name or "/" in name or " " in name:
        raise SystemExit(f"--variant: bad name in {spec!r} (want NAME:FLAGS)")
    return name, shlex.split(flags)


def fmt3(d, key):
    return f'{d[key]["p50"]:.0f} / {d[key]["p90"]:.0f} / {d[key]["p99"]:.0f}'


def med(values):
    return statistics.median(values) if values else float("nan")


def spread(values, digits=1):
    if not values:
        return "-"
    m = med(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def median_distribution(summaries, key):
    """Median over repetitions of each percentile of one latency distribution."""
    return {q: med([s[key][q] for s in summaries]) for q in ("p50", "p90", "p99", "max")}


def on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for raw/, logs/, prompts/, summary.json, results.md")
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--bin-dir", default=str(ROOT / "build" / "bin"), help="asl-server, asl-gateway, asl-loadtest")
    ap.add_argument("--llama-server", default=str(ROOT / "bench" / "out" / "llama.cpp" / "build" / "bin" / "llama-server"))
    ap.add_argument("--no-llama", action="store_true", help="asl-serve targets only")
    ap.add_argument("--threads", type=int, default=2, help="compute threads of both servers")
    ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--concurrency", type=int, nargs="*", default=[4], help="closed-loop settings")
    ap.add_argument("--rate", type=float, nargs="*", default=[], help="Poisson settings, requests/s")
    ap.add_argument("--num-requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1, help="sequential warm-up requests before each run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1, help="prompt offsets and Poisson arrivals (same for all targets)")
    ap.add_argument("--policies", nargs="+", default=["full", "asl"], help="asl-serve policies per variant")
    ap.add_argument("--kv-budget", type=int, default=512, help="for policies other than full")
    ap.add_argument("--select-k", type=int, default=512, help="for policies other than full")
    ap.add_argument("--pruning-arg", action="append", default=[],
                    help="extra asl-loadtest pruning flag for policies other than full, e.g. --pruning-arg=--max-layer=12")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:FLAGS, an asl-server setting to compare (repeatable), e.g. "
                         "'onestep:--scheduler.step_prefill_budget=0'; default: one variant 'asl' with no extra flags")
    ap.add_argument("--server-flag", action="append", default=[], help="extra flag for every asl-server (repeatable)")
    ap.add_argument("--llama-flag", action="append", default=[], help="extra flag for llama-server (repeatable)")
    ap.add_argument("--slots", type=int, default=0,
                    help="llama-server --parallel and asl-server scheduler.max_num_seqs (the same cap on running "
                         "sequences for both); 0 = the largest --concurrency, or 8 with --rate")
    ap.add_argument("--kv-bytes", default="2GiB", help="asl-server's KV pool (kv_cache.bytes)")
    ap.add_argument("--slo-ttft", type=float, default=10000, help="goodput SLO on TTFT, ms")
    ap.add_argument("--slo-tpot", type=float, default=250, help="goodput SLO on TPOT, ms")
    ap.add_argument("--timeout", type=float, default=1800, help="per-request timeout of asl-loadtest, s")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in --out/raw (an interrupted invocation with the same arguments) "
                         "and run only the missing ones")
    ap.add_argument("--port-base", type=int, default=51250)
    ap.add_argument("--health-timeout", type=float, default=300)
    a = ap.parse_args()
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, on_sigterm)

    out = pathlib.Path(a.out).resolve()
    Server.append_logs = a.resume
    for sub in ("raw", "logs", "prompts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    bin_dir = pathlib.Path(a.bin_dir)
    loadtest = str(bin_dir / "asl-loadtest")
    variants = [parse_variant(v) for v in a.variant] or [("asl", [])]
    if len({v[0] for v in variants}) != len(variants):
        raise SystemExit("--variant: names must differ")
    if not a.concurrency and not a.rate:
        raise SystemExit("give at least one --concurrency or --rate")
    slots = a.slots or max(a.concurrency + ([8] if a.rate else []))
    max_len = max(a.prompt_tokens) + a.max_tokens
    for exe in [bin_dir / "asl-server", bin_dir / "asl-gateway", bin_dir / "asl-loadtest"] + \
            ([] if a.no_llama else [pathlib.Path(a.llama_server)]):
        if not os.access(exe, os.X_OK):
            raise SystemExit(f"missing {exe} (build it: scripts/build.sh; llama-server: bash bench/llamacpp.sh)")

    servers, targets = [], []  # targets: dict(name, url, args, server)
    started = time.time()
    try:
        # ---- servers ------------------------------------------------------------------------
        grpc0 = None
        for i, (vname, vflags) in enumerate(variants):
            port = a.port_base + 10 * (i + 1)
            grpc, metrics, http = port, port + 1, port + 2
            grpc0 = grpc0 or f"127.0.0.1:{grpc}"
            server = Server(f"asl-server-{vname}", [
                str(bin_dir / "asl-server"), f"--model.path={a.model}", f"--model.threads={a.threads}",
                "--server.host=127.0.0.1", f"--server.grpc_port={grpc}", f"--server.metrics_port={metrics}",
                f"--kv_cache.bytes={a.kv_bytes}", f"--scheduler.max_num_seqs={slots}",
                *a.server_flag, *vflags], out / "logs")
            gateway = Server(f"asl-gateway-{vname}", [
                str(bin_dir / "asl-gateway"), f"--listen=127.0.0.1:{http}", f"--backend=127.0.0.1:{grpc}",
                "--threads=64", f"--request-timeout={a.timeout:g}"], out / "logs")
            servers += [server, gateway]
            wait_healthy(f"http://127.0.0.1:{http}/health", [server, gateway], a.health_timeout)
            for policy in a.policies:
                args = [f"--policy={policy}"]
                if policy != "full":
                    args += [f"--kv-budget={a.kv_budget}", f"--select-k={a.select_k}", *a.pruning_arg]
                name = f"{vname}/{policy}" if len(variants) > 1 or vname != "asl" else f"asl-serve/{policy}"
                targets.append(dict(name=name, url=f"http://127.0.0.1:{http}", args=args, servers=[server, gateway],
                                    kind="asl-serve", variant=vname, policy=policy))
        llama_version = ""
        if not a.no_llama:
            port = a.port_base
            ctx = slots * (max_len + 64)
            llama = Server("llama-server", [
                a.llama_server, "-m", a.model, "-t", str(a.threads), "-tb", str(a.threads),
                "--host", "127.0.0.1", "--port", str(port), "--parallel", str(slots), "-c", str(ctx),
                "--cont-batching", "--no-cache-prompt", "--cache-ram", "0", "--no-webui",
                "--threads-http", "64", *a.llama_flag], out / "logs")
            servers.append(llama)
            wait_healthy(f"http://127.0.0.1:{port}/health", [llama], a.health_timeout)
            v = subprocess.run([a.llama_server, "--version"], capture_output=True, text=True)
            llama_version = " ".join((v.stdout + v.stderr).split())[:200]
            targets.append(dict(name="llama.cpp", url=f"http://127.0.0.1:{port}", args=[], servers=[llama],
                                kind="llama.cpp", variant="", policy="full (no pruning)"))
        log(f"all servers healthy after {time.time() - started:.0f} s; targets: {[t['name'] for t in targets]}")

        # ---- prompts: once per length, asl-server's tokenizer ----------------------------------
        prompt_files = {}
        for n in a.prompt_tokens:
            f = out / "prompts" / f"p{n}.json"
            subprocess.run([loadtest, f"--target={grpc0}", f"--prompt-tokens={n}",
                            f"--num-requests={a.num_requests}", f"--seed={a.seed}", f"--save-prompts={f}",
                            "--prompts-only"], check=True, stdout=subprocess.DEVNULL)
            prompt_files[n] = f

        # ---- cells ------------------------------------------------------------------------------
        shapes = [("c", c, [f"--concurrency={c}"]) for c in a.concurrency] + \
                 [("r", r, [f"--rate={r:g}"]) for r in a.rate]
        runs = []
        for rep in range(a.repeats):
            for n in a.prompt_tokens:
                for kind, value, shape_args in shapes:
                    order = targets if rep % 2 == 0 else list(reversed(targets))
                    for t in order:
                        for s in t["servers"]:
                            if not s.alive():
                                raise RuntimeError(f"{s.name} died (rc {s.proc.returncode}):\n{s.tail()}")
                        shape = f"{kind}{value:g}"
                        raw = out / "raw" / f"rep{rep}_p{n}_{shape}_{t['name'].replace('/', '_')}.json"
                        cmd = [loadtest, "--api=openai", f"--target={t['url']}", f"--prompt-ids={prompt_files[n]}",
                               f"--num-requests={a.num_requests}", f"--max-tokens={a.max_tokens}",
                               f"--warmup={a.warmup}", f"--seed={a.seed}", f"--timeout={a.timeout:g}",
                               f"--slo-ttft={a.slo_ttft:g}", f"--slo-tpot={a.slo_tpot:g}", f"--label={t['name']}",
                               *shape_args, *t["args"], f"--json={raw}"]
                        txt = out / "raw" / (raw.stem + ".txt")
                        if a.resume and raw.exists() and txt.exists():
                            # Kept from an earlier invocation: its command is the first line of the .txt.
                            summary = json.loads(raw.read_text())["summary"]
                            log(f"rep {rep} p{n} {shape} {t['name']}: kept from {raw.name}")
                            runs.append(dict(rep=rep, prompt_tokens=n, shape=kind, value=value, target=t["name"],
                                             command=txt.read_text().splitlines()[0], rc=0, summary=summary,
                                             loadavg=[], raw=str(raw.relative_to(out)), resumed=True))
                            continue
                        log(f"rep {rep} p{n} {shape} {t['name']}")
                        t0, load_before = time.time(), os.getloadavg()[0]
                        p = subprocess.run(cmd, capture_output=True, text=True)
                        txt.write_text(shlex.join(cmd) + "\n" + p.stdout + p.stderr)
                        summary = json.loads(raw.read_text())["summary"] if raw.exists() else None
                        if p.returncode != 0:
                            log(f"  asl-loadtest exited {p.returncode}: {(p.stderr or p.stdout)[-500:]}")
                        elif summary:
                            log(f"  {summary['completed']}/{summary['num_requests']} ok in {time.time() - t0:.0f} s, "
                                f"TTFT p50 {summary['ttft_ms']['p50']:.0f} ms, ITL max {summary['itl_ms']['max']:.0f} ms, "
                                f"{summary['output_token_throughput']:.1f} out tok/s")
                        runs.append(dict(rep=rep, prompt_tokens=n, shape=kind, value=value, target=t["name"],
                                         command=shlex.join(cmd), rc=p.returncode, summary=summary,
                                         loadavg=[load_before, os.getloadavg()[0]],
                                         raw=str(raw.relative_to(out))))
    finally:
        for s in reversed(servers):
            s.stop()

    # ---- report ---------------------------------------------------------------------------------
    warnings = []
    for r in runs:
        s = r["summary"]
        if not s:
            continue
        if s["total_cached_prompt_tokens"]:
            warnings.append(f"{r['target']} rep {r['rep']} p{r['prompt_tokens']}: "
                            f"{s['total_cached_prompt_tokens']} prompt tokens came from a cache")
        if s["completed"] and s["total_prompt_tokens"] != s["completed"] * r["prompt_tokens"]:
            warnings.append(f"{r['target']} rep {r['rep']} p{r['prompt_tokens']}: usage reports "
                            f"{s['total_prompt_tokens']} prompt tokens for {s['completed']} requests")
    cells = []
    for n in a.prompt_tokens:
        for kind, value, _ in shapes:
            for t in targets:
                rs = [r for r in runs if r["prompt_tokens"] == n and r["shape"] == kind and r["value"] == value
                      and r["target"] == t["name"]]
                ss = [r["summary"] for r in rs if r["summary"] and r["summary"]["completed"] > 0]
                cell = dict(prompt_tokens=n, shape=kind, value=value, target=t["name"], runs=len(rs), ok_runs=len(ss),
                            requests=sum(r["summary"]["num_requests"] for r in rs if r["summary"]),
                            completed=sum(s["completed"] for s in ss),
                            errors={})
                for s in (r["summary"] for r in rs if r["summary"]):
                    for code, k in s["errors"].items():
                        cell["errors"][code] = cell["errors"].get(code, 0) + k
                if ss:
                    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
                        cell[key] = median_distribution(ss, key)
                    cell["itl_max_ms"] = [s["itl_ms"]["max"] for s in ss]
                    cell["output_tok_s"] = [s["output_token_throughput"] for s in ss]
                    cell["goodput"] = [s["goodput"] for s in ss]
                    cell["kv_kept_ratio"] = med([s["kv_kept_ratio"] for s in ss])
                cells.append(cell)

    config = {k: v for k, v in vars(a).items()}
    config.update(slots=slots, variants=[{"name": n, "flags": f} for n, f in variants],
                  servers=[{"name": s.name, "command": shlex.join(s.cmd)} for s in servers])
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=commit(),
                machine=latency.machine(), llama_server_version=llama_version,
                command=shlex.join([".venv/bin/python", "bench/serving.py"] + sys.argv[1:]),
                wall_s=time.time() - started)
    (out / "summary.json").write_text(json.dumps(dict(meta=meta, config=config, cells=cells, runs=runs,
                                                      warnings=warnings), indent=2) + "\n")

    all_loads = [x for r in runs for x in r["loadavg"]]
    loads = f"{min(all_loads):.1f}-{max(all_loads):.1f}" if all_loads else "-"
    resumed = sum(1 for r in runs if r.get("resumed"))
    lines = [
        "# Serving under load: asl-serve vs llama.cpp's llama-server (OpenAI HTTP API)", "",
        f"- date: {meta['date']}; commit: {meta['commit']}; machine: {meta['machine']}",
        f"- model: {pathlib.Path(a.model).name}; {a.threads} compute threads for each server; "
        f"{slots} sequences at most running in each (llama-server --parallel, asl-server scheduler.max_num_seqs)",
        f"- llama-server: {llama_version or '(not run)'}",
        f"- load: {a.num_requests} requests per run, {a.max_tokens} output tokens (ignore_eos, greedy), "
        f"{a.warmup} warm-up request(s) per run, prompts of exactly N token ids (asl-server's tokenizer over "
        f"asl-loadtest's built-in essay text, seed {a.seed}; the same ids for every server); SLOs for goodput: "
        f"TTFT <= {a.slo_ttft:g} ms, TPOT <= {a.slo_tpot:g} ms",
        f"- policies other than full: kv_budget {a.kv_budget}, select_k {a.select_k}"
        + (f", {' '.join(a.pruning_arg)}" if a.pruning_arg else ""),
        f"- {a.repeats} repetition(s), targets alternated cell by cell (order reversed on odd repetitions); "
        "latencies: median over repetitions of each run's percentile; out tok/s, goodput and ITL max: "
        "median (min-max) over repetitions",
        f"- command: `{meta['command']}`; wall time {meta['wall_s'] / 60:.1f} min",
        *([f"- {resumed} of {len(runs)} runs kept from an earlier, interrupted invocation (--resume; their "
           "commands are in raw/*.txt, their load averages are not recorded)"] if resumed else []),
        f"- 1-minute load average at the start and end of the runs: {loads}"
        " (the server under test keeps about 2 threads busy; clearly more means other work shared the cores)",
        "- servers:", *[f"  - `{s['command']}`" for s in config["servers"]],
        "",
        "Client-side, per request: TTFT = send to the first SSE chunk with text; ITL = gaps between such "
        "chunks (all requests pooled); ITL max = the longest gap any stream saw; TPOT = (e2e - TTFT) / "
        "(output tokens - 1) with the count from usage; e2e = send to the end of the stream.",
        "",
        "| prompt | load | server | ok / sent | TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms | ITL max ms | "
        "TPOT p50 / p90 / p99 ms | e2e p50 / p90 / p99 ms | out tok/s | goodput req/s | KV kept | errors |",
        "|---:|---|---|---:|---|---|---|---|---|---|---|---:|---|",
    ]
    for c in cells:
        load = f"conc. {c['value']:g}" if c["shape"] == "c" else f"Poisson {c['value']:g}/s"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(c["errors"].items())) or "-"
        kv = f"{c['kv_kept_ratio']:.3f}" if c.get("kv_kept_ratio") else "-"  # llama-server reports none
        if c["ok_runs"] == 0:
            lines.append(f"| {c['prompt_tokens']} | {load} | {c['target']} | {c['completed']} / {c['requests']} | "
                         f"- | - | - | - | - | - | - | - | {errors} |")
            continue
        lines.append(
            f"| {c['prompt_tokens']} | {load} | {c['target']} | {c['completed']} / {c['requests']} | "
            f"{fmt3(c, 'ttft_ms')} | {fmt3(c, 'itl_ms')} | {spread(c['itl_max_ms'], 0)} | {fmt3(c, 'tpot_ms')} | "
            f"{fmt3(c, 'e2e_ms')} | {spread(c['output_tok_s'])} | {spread(c['goodput'], 3)} | "
            f"{kv} | {errors} |")
    if warnings:
        lines += ["", "Warnings:", *[f"- {w}" for w in warnings]]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [r for r in runs if r["rc"] != 0]
    if failed:
        log(f"{len(failed)} run(s) of asl-loadtest failed; see raw/*.txt")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

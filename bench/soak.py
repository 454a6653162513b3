"""Soak (issue 18 item 4): asl-server + asl-gateway under about 80 % of their capacity for a long
time, with every kind of request a production server sees, then checks that nothing leaked.

  calibrate   a closed loop of --slots clients running the mix below for --calibrate seconds gives the
              completed requests/s the stack sustains (its capacity for this mix);
  soak        Poisson arrivals at --load x that rate for --duration seconds (at most 4 x --slots in
              flight; an arrival beyond that is counted as shed, never queued in the client);
  the mix     through the gateway (OpenAI API): streamed chat, unary completions, a stream the
              client closes after a few chunks, a unary request whose client gives up (disconnect),
              json_object structured output; through gRPC directly: streamed Generate, a stream
              cancelled after a few tokens, a deadline that expires (often mid-prefill). Prompts
              of 20-2,000 tokens; the pruning policy of each request drawn from all six;
  samples     every --sample-every seconds: RSS and open fds of both processes, KV blocks used,
              requests running and waiting (asl-server's /metrics);
  end         after the load stops: KV blocks used, running and waiting must reach 0 within 30 s,
              and a last request must succeed. RSS growth is measured from the first sample after
              the warm-up (--warmup seconds of the soak) to the last.

Outcomes per kind: "ok" (completed, or the client-side cancel/disconnect/deadline the kind intends),
else the HTTP status or gRPC code (an error). The expected kinds' codes (DEADLINE_EXCEEDED for
deadline, CANCELLED for cancel) count as ok.

  .venv/bin/python bench/soak.py --duration 3600 --out bench/results/soak.md
"""
import argparse
import collections
import concurrent.futures as cf
import importlib.util
import json
import os
import random
import socket
import statistics
import threading
import time
from pathlib import Path

import grpc
import requests

from bench_common import ROOT, conftest, results_header

# The gRPC stubs the server suite generates from proto/ (its conftest, loaded under another name:
# the gateway suite's conftest is the one bench_common imports).
_spec = importlib.util.spec_from_file_location("server_conftest", ROOT / "tests" / "server" / "conftest.py")
_server_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_server_conftest)
pb, pb_grpc = _server_conftest.pb, _server_conftest.pb_grpc

POLICIES = ["full", "snapkv", "asl", "fastkv", "gemfilter", "asl_2pass"]
WORDS = ("red green blue amber lantern harbour door warehouse river stone bridge tower market "
         "garden window letter morning evening").split()


def prompt_text(rng):
    """20 to ~2,000 tokens: numbered lines of words (distinct per request, so the prefix cache
    hits only their shared head), with a question at the end."""
    lines = rng.choice([1, 2, 4, 8, 16, 40, 80])
    body = [f"Line {i}: " + " ".join(rng.choice(WORDS) for _ in range(18)) for i in range(lines)]
    return "\n".join(body) + "\nQuestion: which colour appears most often above? Answer:"


def pruning(rng):
    return {"policy": rng.choice(POLICIES), "kv_budget": 256}


class Client:
    """One stack's endpoints; each call returns an outcome string ("ok" or an error code)."""

    def __init__(self, stack, model):
        self.base = stack.base_url
        self.model = model
        self.channel = grpc.insecure_channel(stack.grpc_address)
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.local = threading.local()

    def session(self):
        if not hasattr(self.local, "s"):
            self.local.s = requests.Session()
        return self.local.s

    def _http(self, path, body, stream=False, timeout=300):
        return self.session().post(self.base + path, json=body, stream=stream, timeout=timeout)

    def http_stream_chat(self, rng):
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt_text(rng)}],
                "max_tokens": rng.randint(8, 48), "temperature": 0.7, "stream": True, "pruning": pruning(rng)}
        with self._http("/v1/chat/completions", body, stream=True) as r:
            if r.status_code != 200:
                return f"http {r.status_code}"
            done = False
            for line in r.iter_lines():
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: ") and b'"error"' in line[:40]:
                    return "http stream error"
            return "ok" if done else "http stream cut"

    def http_completion(self, rng):
        body = {"model": self.model, "prompt": prompt_text(rng), "max_tokens": rng.randint(8, 48),
                "temperature": 0, "pruning": pruning(rng)}
        r = self._http("/v1/completions", body)
        return "ok" if r.status_code == 200 and r.json()["choices"][0]["text"] is not None else f"http {r.status_code}"

    def http_json(self, rng):
        body = {"model": self.model, "messages": [{"role": "user", "content": "Describe a city as JSON."}],
                "max_tokens": 48, "response_format": {"type": "json_object"}, "temperature": 1.0,
                "seed": rng.randint(0, 1 << 30)}
        r = self._http("/v1/chat/completions", body)
        return "ok" if r.status_code == 200 else f"http {r.status_code}"

    def http_stream_close(self, rng):
        """The client reads a few SSE events, then closes the connection."""
        body = {"model": self.model, "prompt": prompt_text(rng), "max_tokens": 200, "stream": True,
                "ignore_eos": True, "pruning": pruning(rng)}
        with self._http("/v1/completions", body, stream=True) as r:
            if r.status_code != 200:
                return f"http {r.status_code}"
            want = rng.randint(1, 6)
            for i, line in enumerate(r.iter_lines()):
                if i >= want:
                    break
        self.session().close()  # drop the pooled connection, so the server sees the close
        del self.local.s
        return "ok"

    def http_unary_disconnect(self, rng):
        """A unary request whose client gives up before the answer (a raw socket, closed)."""
        body = json.dumps({"model": self.model, "prompt": prompt_text(rng), "max_tokens": 300,
                           "ignore_eos": True, "pruning": pruning(rng)}).encode()
        host, port = self.base.rsplit("//", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(rng.uniform(0.2, 1.5))
        return "ok"

    def _generate(self, rng, max_tokens, **call):
        req = pb.GenerateRequest(prompt=prompt_text(rng),
                                 sampling=pb.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                                 pruning=pb.PruningParams(**pruning(rng)))
        return self.stub.Generate(req, **call)

    def grpc_stream(self, rng):
        complete = False
        try:
            for r in self._generate(rng, rng.randint(8, 48), timeout=300):
                complete = complete or r.HasField("complete")
        except grpc.RpcError as e:
            return f"grpc {e.code().name}"
        return "ok" if complete else "grpc no complete"

    def grpc_cancel(self, rng):
        call = self._generate(rng, 300, timeout=300)
        want, got = rng.randint(1, 8), 0
        try:
            for r in call:
                got += len(r.chunk.token_ids)
                if got >= want:
                    call.cancel()
                    break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                return f"grpc {e.code().name}"
        return "ok"

    def grpc_deadline(self, rng):
        try:
            for _ in self._generate(rng, 300, timeout=rng.uniform(0.2, 3.0)):
                pass
        except grpc.RpcError as e:
            return "ok" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else f"grpc {e.code().name}"
        return "ok"  # finished inside its deadline


MIX = [  # (kind, weight)
    ("http_stream_chat", 5), ("http_completion", 3), ("http_json", 1), ("http_stream_close", 2),
    ("http_unary_disconnect", 1), ("grpc_stream", 4), ("grpc_cancel", 2), ("grpc_deadline", 2),
]


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = collections.defaultdict(collections.Counter)
        self.done = 0

    def run_one(self, client, rng):
        kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
        try:
            outcome = getattr(client, kind)(rng)
        except requests.RequestException as e:
            outcome = f"http exception {type(e).__name__}"
        except OSError as e:
            outcome = f"os {type(e).__name__}"
        with self.lock:
            self.outcomes[kind][outcome] += 1
            self.done += 1


def proc_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def engine_gauges(stack):
    return {name: stack.metric(name) for name in ("asl_kv_blocks_used", "asl_requests_running", "asl_requests_waiting")}


def sample(stack, t0):
    row = {"t": time.time() - t0}
    for name, p in stack.processes.items():
        row[name] = proc_stats(p.proc.pid)
    row.update(engine_gauges(stack))
    return row


def calibrate(client, slots, seconds, seed):
    tally, stop = Tally(), time.time() + seconds

    def loop(i):
        rng = random.Random(seed * 1000 + i)
        while time.time() < stop:
            tally.run_one(client, rng)

    t0 = time.time()
    with cf.ThreadPoolExecutor(slots) as ex:
        list(ex.map(loop, range(slots)))
    return tally.done / (time.time() - t0), tally


def soak(stack, client, rate, args):
    tally, rng = Tally(), random.Random(args.seed)
    in_flight = threading.Semaphore(4 * args.slots)
    shed, samples = 0, []
    t0 = time.time()
    next_sample = t0
    ex = cf.ThreadPoolExecutor(4 * args.slots)

    def one(seed):
        try:
            tally.run_one(client, random.Random(seed))
        finally:
            in_flight.release()

    t = t0
    while t < t0 + args.duration:
        t += rng.expovariate(rate)
        while time.time() < t:
            if time.time() >= next_sample:
                samples.append(sample(stack, t0))
                next_sample += args.sample_every
            time.sleep(min(0.05, max(0.0, t - time.time())))
        if in_flight.acquire(blocking=False):
            ex.submit(one, rng.randrange(1 << 60))
        else:
            shed += 1
    ex.shutdown(wait=True)
    return tally, shed, samples, time.time() - t0


def wait_idle(stack, timeout=30):
    deadline = time.time() + timeout
    while True:
        g = engine_gauges(stack)
        if all(v == 0 for v in g.values()) or time.time() > deadline:
            return g, time.time() - (deadline - timeout)
        time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3600)
    ap.add_argument("--calibrate", type=float, default=120)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--slots", type=int, default=8, help="scheduler.max_num_seqs and the calibration clients")
    ap.add_argument("--warmup", type=float, default=300)
    ap.add_argument("--sample-every", type=float, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                    help="add to asl-server's environment (memory diagnostics: LD_PRELOAD=libjemalloc.so.2, "
                         "MALLOC_CONF=..., GLIBC_TUNABLES=...); repeatable, reported")
    args = ap.parse_args()
    server_env = dict(kv.split("=", 1) for kv in args.server_env)
    logs = Path("/tmp/asl_soak")
    logs.mkdir(exist_ok=True)
    with conftest.start_stack(logs, f"--model.threads={args.threads}", "--kv_cache.bytes=256MiB",
                              f"--scheduler.max_num_seqs={args.slots}", gateway_threads=8 * args.slots + 16,
                              server_env=server_env) as stack:
        model = requests.get(stack.base_url + "/v1/models", timeout=30).json()["data"][0]["id"]
        client = Client(stack, model)
        capacity, cal = calibrate(client, args.slots, args.calibrate, args.seed)
        rate = args.load * capacity
        print(f"capacity {capacity:.2f} req/s; soaking at {rate:.2f} req/s for {args.duration:.0f} s", flush=True)
        tally, shed, samples, wall = soak(stack, client, rate, args)
        idle, idle_after = wait_idle(stack)
        samples.append(sample(stack, time.time() - wall - idle_after))
        last = client.grpc_stream(random.Random(0))
        server_log = stack.processes["asl-server"].log()
        statuses = collections.Counter()  # asl-server's own count of how requests ended
        for line in stack.metrics().splitlines():
            if line.startswith("asl_requests_total{") and 'status="' in line:
                statuses[line.split('status="', 1)[1].split('"', 1)[0]] += float(line.rsplit(" ", 1)[1])
    warm = next((s for s in samples if s["t"] >= args.warmup), samples[0])
    end = samples[-1]
    errors = {k: sum(n for o, n in c.items() if o != "ok") for k, c in tally.outcomes.items()}
    lines = [f"# Soak: asl-server + asl-gateway at {args.load:.0%} of capacity for {args.duration / 60:.0f} minutes",
             "", results_header("soak.py", f"threads {args.threads}, default model (SmolLM2-135M-Instruct Q4_1), "
                                f"scheduler.max_num_seqs {args.slots}, kv_cache 256 MiB" +
                                "".join(f", asl-server env {kv}" for kv in args.server_env)).rstrip(), "",
             f"- Capacity (closed loop of {args.slots} clients, {args.calibrate:.0f} s, same mix): "
             f"**{capacity:.2f} requests/s**; soak arrivals (Poisson) at **{rate:.2f}/s**",
             f"- Soak: {wall:.0f} s, **{sum(sum(c.values()) for c in tally.outcomes.values())} requests**, "
             f"{shed} shed by the client (more than {4 * args.slots} in flight), "
             f"**{sum(errors.values())} errors**",
             f"- After the load: KV blocks used **{idle['asl_kv_blocks_used']:.0f}**, running "
             f"{idle['asl_requests_running']:.0f}, waiting {idle['asl_requests_waiting']:.0f} "
             f"({idle_after:.1f} s after the last request ended); a last gRPC request: {last}",
             ""]
    for name in ("asl-server", "asl-gateway"):
        (r0, f0), (r1, f1) = warm[name], end[name]
        lines.append(f"- {name}: RSS {r0:.1f} → {r1:.1f} MiB (**{100 * (r1 - r0) / r0:+.1f} %** from "
                     f"t = {warm['t']:.0f} s to the end), open fds {f0} → {f1}")
    lines.append("- asl-server's requests by how they ended (asl_requests_total, calibration and soak): " +
                 ", ".join(f"{k} {v:.0f}" for k, v in statuses.most_common()))
    lines.append(f"- asl-server log lines at error level: "
                 f"{sum(1 for line in server_log.splitlines() if '[error]' in line or '[critical]' in line)}")
    lines += ["", "| kind | requests | outcomes |", "|---|---|---|"]
    for kind, _ in MIX:
        c = tally.outcomes.get(kind, collections.Counter())
        lines.append(f"| {kind} | {sum(c.values())} | " + ", ".join(f"{o}: {n}" for o, n in c.most_common()) + " |")
    lines += ["", "Calibration outcomes: " + "; ".join(
        f"{k} " + ", ".join(f"{o}: {n}" for o, n in c.most_common()) for k, c in cal.outcomes.items()),
              "", "Samples (t s, server RSS MiB / fds, gateway RSS MiB / fds, KV blocks used, running, waiting):", "",
              "| t | server RSS | server fds | gateway RSS | gateway fds | blocks used | running | waiting |",
              "|---|---|---|---|---|---|---|---|"]
    step = max(1, len(samples) // 40)
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        lines.append(f"| {s['t']:.0f} | {s['asl-server'][0]:.1f} | {s['asl-server'][1]} | {s['asl-gateway'][0]:.1f} | "
                     f"{s['asl-gateway'][1]} | {s['asl_kv_blocks_used']:.0f} | {s['asl_requests_running']:.0f} | "
                     f"{s['asl_requests_waiting']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    ok = idle["asl_kv_blocks_used"] == 0 and last == "ok"
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

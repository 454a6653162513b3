#!/usr/bin/env python3
"""Cross-check asl-serve's `snapkv` against NVIDIA kvpress's SnapKVPress on the eval samples.

kvpress (https://github.com/NVIDIA/kvpress) is an independent implementation of SnapKV on Hugging Face
transformers. With the same knobs (window W=32, average pooling kernel 7, C kept tokens per layer and KV
head, window included) both should keep the same tokens at every layer, so greedy generations should
agree token for token up to float32 summation-order noise. If they agree, an accuracy drop of `snapkv`
in bench/results/accuracy.md belongs to the method on this model, not to our implementation.

kvpress pins transformers < 5.3 while the test venv pins 5.23, so kvpress lives in its own directory:

  .venv/bin/pip install --target bench/out/kvpress_site --no-deps kvpress==0.5.5 transformers==5.2.0 \
      huggingface_hub==1.33.0 tokenizers==0.22.2 httpx==0.28.1 httpcore==1.0.9 typer-slim==0.24.0 \
      cachetools==5.5.2 datasets==5.2.0 dill==0.4.1 fire==0.6.0 multiprocess==0.70.19 pandas==2.3.3 \
      peft==0.21.2 pyarrow==26.0.1 python-dateutil six==1.17.0 termcolor==3.3.0 pytz tzdata xxhash==4.1.0
  build/bin/asl-cli eval --lengths 1024 --samples 2 --niah-samples 0 --dry-run --out bench/out/kvpress
  PYTHONPATH=bench/out/kvpress_site .venv/bin/python bench/kvpress_check.py \
      --samples bench/out/kvpress.samples.json --budget 256 --out bench/results/kvpress_check.md
"""
import argparse
import importlib.metadata
import json
import pathlib
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def hf_snapkv_generate(model, press, ids, max_new, eos):
    """Prefill the whole prompt under the press (every layer compressed, as asl-serve's snapkv does),
    then greedy-decode at the original positions n, n+1, ... (the pattern of kvpress's pipeline)."""
    from transformers import DynamicCache
    cache = DynamicCache()
    x = torch.tensor([ids])
    n = len(ids)
    with torch.no_grad():
        if press is not None:
            with press(model):
                out = model(input_ids=x, past_key_values=cache, logits_to_keep=1)
        else:
            out = model(input_ids=x, past_key_values=cache, logits_to_keep=1)
        kept = cache.layers[0].keys.shape[-2]
        gen = [int(out.logits[0, -1].argmax())]
        for i in range(max_new - 1):
            if gen[-1] in eos:
                break
            out = model(input_ids=torch.tensor([[gen[-1]]]), past_key_values=cache,
                        position_ids=torch.tensor([[n + i]]), logits_to_keep=1)
            gen.append(int(out.logits[0, -1].argmax()))
    if gen and gen[-1] in eos:
        gen = gen[:-1]
    return gen, kept


def ours_generate(cli, model_path, ids, max_new, policy, budget):
    cmd = [cli, "generate", "--model", model_path, "--json", "--ids", ",".join(map(str, ids)),
           "--max-tokens", str(max_new), "--policy", policy, "--window", "32", "--kernel", "7",
           "--pooling", "avg", "--kv-budget", str(budget if policy != "full" else 0), "--kv-cache", "1GiB"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", required=True, help="<out>.samples.json from asl-cli eval --dry-run")
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--cli", default=str(ROOT / "build" / "bin" / "asl-cli"))
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--max-new", type=int, default=0, help="cap on generated tokens (0: the sample's max_tokens)")
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    import transformers
    from kvpress import SnapKVPress
    from transformers import AutoModelForCausalLM

    mp = pathlib.Path(a.model)
    model = AutoModelForCausalLM.from_pretrained(mp.parent, gguf_file=mp.name, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    samples = json.load(open(a.samples))

    rows = []
    for s in samples:
        ids = s["prompt_ids"]
        n = len(ids)
        max_new = int(s["max_tokens"]) if not a.max_new else min(a.max_new, int(s["max_tokens"]))
        answers = s["answers"] if isinstance(s["answers"], list) else json.loads(s["answers"].replace("'", '"'))
        t0 = time.time()
        # kvpress keeps int(n * (1 - ratio)) tokens: aim half a token above C so float rounding gives C.
        press = SnapKVPress(compression_ratio=1.0 - (a.budget + 0.5) / n, window_size=32, kernel_size=7)
        hf_ids, hf_kept = hf_snapkv_generate(model, press, ids, max_new, eos)
        ours = ours_generate(a.cli, a.model, ids, max_new, "snapkv", a.budget)
        our_ids = [t for t in ours["token_ids"] if t not in eos]  # the EOS that ended it, as for kvpress
        our_kept = ours["pruning"]["kv_tokens_kept"] // model.config.num_hidden_layers  # a sum over layers
        same = 0
        while same < min(len(hf_ids), len(our_ids)) and hf_ids[same] == our_ids[same]:
            same += 1
        hf_text = model_tokenizer_decode(a, hf_ids)
        score = lambda text: sum(x.lower() in text.lower() for x in answers) / len(answers)
        rows.append(dict(task=s["task"], index=s["index"], n=n, hf_kept=hf_kept, our_kept=our_kept,
                         hf_len=len(hf_ids), our_len=len(our_ids), same_prefix=same,
                         identical=hf_ids == our_ids, hf_score=score(hf_text), our_score=score(ours["text"]),
                         our_text=ours["text"][:60], hf_text=hf_text[:60]))
        r = rows[-1]
        print(f'{r["task"]}#{r["index"]} n={n} kept hf={hf_kept} ours={our_kept} identical={r["identical"]} '
              f'({same}/{max(len(hf_ids), len(our_ids))}) score hf={r["hf_score"]:.2f} ours={r["our_score"]:.2f} '
              f'[{time.time() - t0:.1f}s]', file=sys.stderr)

    ident = sum(r["identical"] for r in rows)
    lines = [
        "# snapkv vs NVIDIA kvpress SnapKVPress (independent reference)", "",
        f"- kvpress {importlib.metadata.version('kvpress')}, transformers "
        f"{transformers.__version__}, float32 CPU; asl-serve `asl-cli generate --policy snapkv`",
        f"- budget C = {a.budget} per layer and KV head (window 32 included), avg pooling kernel 7; "
        "kvpress: `SnapKVPress(compression_ratio=1-(C+0.5)/n, window_size=32, kernel_size=7)` applied to the whole "
        "prompt, greedy decoding at the original positions",
        f"- samples: `{a.samples}` ({len(rows)} prompts); command: `{' '.join(['bench/kvpress_check.py'] + sys.argv[1:])}`",
        f"- identical greedy generations: **{ident} / {len(rows)}**; mean score kvpress "
        f"{100 * sum(r['hf_score'] for r in rows) / max(1, len(rows)):.1f}, asl-serve "
        f"{100 * sum(r['our_score'] for r in rows) / max(1, len(rows)):.1f}", "",
        "| task | sample | prompt tokens | kept / layer (kvpress, ours) | tokens generated (kvpress, ours) | common prefix | identical | score kvpress | score ours | kvpress text | ours text |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        esc = lambda t: t.replace("|", "\\|").replace("\n", "\\n")
        lines.append(f'| {r["task"]} | {r["index"]} | {r["n"]} | {r["hf_kept"]}, {r["our_kept"]} | '
                     f'{r["hf_len"]}, {r["our_len"]} | {r["same_prefix"]} | {"yes" if r["identical"] else "no"} | '
                     f'{r["hf_score"]:.2f} | {r["our_score"]:.2f} | {esc(r["hf_text"])} | {esc(r["our_text"])} |')
    text = "\n".join(lines) + "\n"
    if a.out:
        pathlib.Path(a.out).write_text(text)
    print(text)


_TOK = {}


def model_tokenizer_decode(a, ids):
    if "tok" not in _TOK:
        from transformers import AutoTokenizer
        mp = pathlib.Path(a.model)
        _TOK["tok"] = AutoTokenizer.from_pretrained(mp.parent, gguf_file=mp.name)
    return _TOK["tok"].decode(ids, skip_special_tokens=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a Llama-shaped model with random weights as a Hugging Face safetensors directory, for
timing on the GPU machine (no hub, no download). Default shape: Llama-3.1-8B (32 layers, hidden
4096, 32 heads, 8 KV heads, FFN 14336, vocab 128256, llama3 RoPE scaling).

  python scripts/gpu/make_random_model.py --out /tmp/llama8b-random            # 8B shape, bf16
  python scripts/gpu/make_random_model.py --out /tmp/tiny --layers 2 --hidden 256 --heads 4 \
      --kv-heads 2 --ffn 512 --vocab 1024                                        # a tiny one

Weights are N(0, 0.02) like a fresh initialisation; norms are 1. The tokenizer is byte-level with
no merges (256 byte tokens, then reserved tokens up to the vocab size): enough to load and to feed
token ids; the text it produces is meaningless, which does not matter for timing.
"""
import argparse
import json
import pathlib

import torch
from safetensors.torch import save_file


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--context", type=int, default=131072)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, a.dtype)
    g = torch.Generator(device=a.device).manual_seed(a.seed)
    d = a.hidden // a.heads

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=a.device, dtype=torch.float32) * 0.02).to(dtype).cpu()

    ones = lambda n: torch.ones(n, dtype=dtype)
    shard, shard_idx, index, size = {}, 0, {}, 0

    def flush():
        nonlocal shard, shard_idx, size
        if not shard:
            return
        name = f"model-{shard_idx:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        for k in shard:
            index[k] = name
        shard, size = {}, 0
        shard_idx += 1

    def add(name, t):
        nonlocal size
        shard[name] = t.contiguous()
        size += t.numel() * t.element_size()
        if size > 4 << 30:
            flush()

    add("model.embed_tokens.weight", rnd(a.vocab, a.hidden))
    for i in range(a.layers):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", ones(a.hidden))
        add(p + "self_attn.q_proj.weight", rnd(a.heads * d, a.hidden))
        add(p + "self_attn.k_proj.weight", rnd(a.kv_heads * d, a.hidden))
        add(p + "self_attn.v_proj.weight", rnd(a.kv_heads * d, a.hidden))
        add(p + "self_attn.o_proj.weight", rnd(a.hidden, a.heads * d))
        add(p + "post_attention_layernorm.weight", ones(a.hidden))
        add(p + "mlp.gate_proj.weight", rnd(a.ffn, a.hidden))
        add(p + "mlp.up_proj.weight", rnd(a.ffn, a.hidden))
        add(p + "mlp.down_proj.weight", rnd(a.hidden, a.ffn))
    add("model.norm.weight", ones(a.hidden))
    add("lm_head.weight", rnd(a.vocab, a.hidden))
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}, indent=1))

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden,
        "intermediate_size": a.ffn, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "head_dim": d, "vocab_size": a.vocab,
        "max_position_embeddings": a.context, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": False, "attention_bias": False, "torch_dtype": a.dtype,
        "bos_token_id": 256, "eos_token_id": 257,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))

    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    added = []
    for i in range(256, a.vocab):
        tok = f"<|reserved_special_token_{i - 256}|>"
        vocab[tok] = i
        added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})
    tokenizer = {
        "version": "1.0", "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": [], "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False},
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|reserved_special_token_0|>", "eos_token": "<|reserved_special_token_1|>", "add_bos_token": False}))
    print(f"wrote {out}: {a.layers} layers, hidden {a.hidden}, {shard_idx} shard(s)")


if __name__ == "__main__":
    main()

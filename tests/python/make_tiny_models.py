#!/usr/bin/env python3
"""Writes tiny random models and reference values for tests/model (model_loader_tests).

Usage: make_tiny_models.py OUT_DIR

Everything the C++ loader is compared against is computed here independently: quantised blocks
are decoded with gguf-py's gguf.quants.dequantize, and llama q/k rows are permuted with
convert_hf_to_gguf's permute, so the loader's un-permutation is checked against the original
Hugging Face layout. Reference arrays are raw little-endian float32 files (expected/<name>.f32).
The shapes and hyper-parameters below are hard-coded in tests/model/model_loader_tests.cpp.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants
from safetensors.numpy import save_file

RNG = np.random.default_rng(1234)

# Shared tiny shapes: hidden and ffn are multiples of 256 so every K-quant type fits a row.
VOCAB, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 320, 256, 4, 2, 64, 512, 2

# Byte offsets of the fp16 scale fields inside one block; randomised bytes elsewhere are all valid.
F16_FIELDS = {T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q4_K: [0, 2], T.Q6_K: [208]}


def random_blocks(qtype, rows, cols):
    """Random encoded data for `qtype` with finite, moderate fp16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    nblocks = cols // block
    raw = RNG.integers(0, 256, size=(rows, nblocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = RNG.uniform(0.0005, 0.02, size=(rows, nblocks)).astype(np.float16)
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(rows, nblocks, 2)
    return raw.reshape(rows, nblocks * size)


def encode(x, qtype):
    """(encoded array for GGUFWriter.add_tensor, raw_dtype, float32 reference)."""
    if qtype == T.F32:
        return x.astype(np.float32), None, x.astype(np.float32)
    if qtype == T.F16:
        h = x.astype(np.float16)
        return h, None, h.astype(np.float32)
    if qtype in (T.Q4_K, T.Q6_K):  # gguf-py cannot quantise these; random blocks stand in
        raw = random_blocks(qtype, *x.shape)
    else:
        raw = quants.quantize(x.astype(np.float32), qtype)
    return raw, qtype, quants.dequantize(raw, qtype).astype(np.float32).reshape(x.shape)


def write_f32(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


def hf_weights(arch, tied):
    """Random HF-layout weights, exactly representable in bf16 (hence also in f16 and f32)."""
    def rnd(*shape):
        mag = RNG.uniform(1e-3, 0.1, size=shape)
        sign = RNG.choice([-1.0, 1.0], size=shape)
        x = (mag * sign).astype(np.float32)
        return (x.view(np.uint32) & 0xFFFF0000).view(np.float32)  # truncate to bf16

    w = {"model.embed_tokens.weight": rnd(VOCAB, HIDDEN), "model.norm.weight": rnd(HIDDEN)}
    if not tied:
        w["lm_head.weight"] = rnd(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = rnd(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = rnd(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = rnd(HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = rnd(HIDDEN, HEADS * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = rnd(FFN, HIDDEN)
        w[p + "mlp.up_proj.weight"] = rnd(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = rnd(HIDDEN, FFN)
        if arch == "qwen2":
            w[p + "self_attn.q_proj.bias"] = rnd(HEADS * HEAD_DIM)
            w[p + "self_attn.k_proj.bias"] = rnd(KV_HEADS * HEAD_DIM)
            w[p + "self_attn.v_proj.bias"] = rnd(KV_HEADS * HEAD_DIM)
    return w


def permute(weights, n_head, n_head_kv):
    """convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{GGUF_NAMES[rest]}"


# Per-tensor GGUF types: every supported type appears in each model, q/k of layer 0 stay F32 so
# the un-permuted result must equal the HF original bit for bit.
TYPES = {
    "token_embd.weight": T.Q8_0, "output.weight": T.Q6_K,
    "blk.0.attn_q.weight": T.F32, "blk.0.attn_k.weight": T.F32, "blk.0.attn_v.weight": T.F16,
    "blk.0.attn_output.weight": T.Q4_0, "blk.0.ffn_gate.weight": T.Q4_1, "blk.0.ffn_up.weight": T.Q4_K,
    "blk.0.ffn_down.weight": T.Q6_K,
    "blk.1.attn_q.weight": T.Q8_0, "blk.1.attn_k.weight": T.BF16, "blk.1.attn_v.weight": T.Q4_K,
    "blk.1.attn_output.weight": T.Q6_K, "blk.1.ffn_gate.weight": T.F16, "blk.1.ffn_up.weight": T.BF16,
    "blk.1.ffn_down.weight": T.Q4_0,
}


def tokenizer_kv(w, pre):
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"tok{i}" for i in range(3, VOCAB)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (VOCAB - 3))
    w.add_token_merges(["t o", "to k"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_eot_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def llama3_rope_factors(theta, factor=8.0, low=1.0, high=4.0, old_ctx=8192):
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors (rope_freqs.weight)."""
    import math
    freqs = 1.0 / (theta ** (np.arange(0, HEAD_DIM, 2, dtype=np.float32) / HEAD_DIM))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(path, arch, hf, out_dir, tag, *, arch_name=None, drop=(), bad_shape=None, expected=True,
               rope_freqs=None, theta=None, tokenizer=True):
    w = gguf.GGUFWriter(path, arch_name or arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(LAYERS)
    w.add_context_length(1024)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5 if arch == "llama" else 1e-6)
    w.add_rope_freq_base(theta or (50000.0 if arch == "llama" else 1000000.0))
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(VOCAB)
    w.add_file_type(1)
    if tokenizer:
        tokenizer_kv(w, "smollm" if arch == "llama" else "qwen2")
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    for hf_name, x in hf.items():
        name = gguf_name(hf_name)
        if name in drop:
            continue
        src = x
        if arch == "llama" and name.endswith("attn_q.weight"):
            src = permute(x, HEADS, HEADS)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            src = permute(x, HEADS, KV_HEADS)
        if name == bad_shape:
            src = np.concatenate([src, src[:, :32]], axis=1)
        qtype = TYPES.get(name, T.F32)
        enc, raw_dtype, ref = encode(src, qtype)
        if raw_dtype is None:
            w.add_tensor(name, enc)
        else:
            w.add_tensor(name, enc, raw_dtype=raw_dtype)
        if expected:
            if arch == "llama" and name.endswith("attn_q.weight"):
                ref = permute_back(ref, HEADS)
            elif arch == "llama" and name.endswith("attn_k.weight"):
                ref = permute_back(ref, KV_HEADS)
            write_f32(os.path.join(out_dir, "expected", tag, hf_name + ".f32"), ref)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def permute_back(w, n_head):
    """transformers' _reverse_permute_weights (modeling_gguf_pytorch_utils.py)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def to_st(x, dtype):
    """float32 array -> array in safetensors dtype ('F32', 'F16' or 'BF16', the last as uint16 bits)."""
    if dtype == "F16":
        return x.astype(np.float16)
    if dtype == "BF16":
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x


def write_safetensors(path, tensors, dtypes):
    """safetensors.numpy cannot write bf16, so the file is assembled by hand (format spec)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dt = dtypes(name)
        data = np.ascontiguousarray(to_st(tensors[name], dt)).tobytes()
        header[name] = {"dtype": dt, "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    hjson = json.dumps(header).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hjson).to_bytes(8, "little"))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def st_dtype(name):
    if "q_proj" in name or "k_proj" in name:
        return "F32"
    if "v_proj" in name or "norm" in name:
        return "F16"
    return "BF16"


def hf_config(arch, tied):
    c = {"model_type": arch, "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
         "num_hidden_layers": LAYERS, "hidden_size": HIDDEN, "num_attention_heads": HEADS,
         "num_key_value_heads": KV_HEADS, "intermediate_size": FFN, "vocab_size": VOCAB,
         "max_position_embeddings": 1024, "tie_word_embeddings": tied, "torch_dtype": "bfloat16"}
    if arch == "llama":
        c.update(rms_norm_eps=1e-5, rope_theta=50000.0, head_dim=HEAD_DIM,
                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 256})
    else:  # transformers 5 style: theta and scaling in rope_parameters
        c.update(rms_norm_eps=1e-6, use_sliding_window=False,
                 rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0})
    return c


def write_hf_dir(d, arch, hf, tied, shards):
    os.makedirs(d, exist_ok=True)
    tag = os.path.basename(d)
    for name, x in hf.items():  # the originals, which every dtype in st_dtype stores exactly
        write_f32(os.path.join(os.path.dirname(d), "expected", tag, name + ".f32"), x)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf_config(arch, tied), f, indent=1)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), hf, st_dtype)
        return
    names = sorted(hf)
    weight_map = {}
    for s in range(shards):
        part = {n: hf[n] for n in names[s::shards]}
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(d, fname), part, st_dtype)
        weight_map.update({n: fname for n in part})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=1)


def write_quant_file(out):
    """quants.gguf: one tensor per type, quantised from data (q.*) and from random blocks (r.*)."""
    w = gguf.GGUFWriter(os.path.join(out, "quants.gguf"), "llama")
    x = RNG.standard_normal((3, 512)).astype(np.float32)
    x[0, :8] = [0.0, -0.0, 1e-7, -3e-6, 6e-5, 65504.0, -1e-8, 2.5]  # f16 zeros, subnormals, max
    for qtype in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q6_K):
        if qtype == T.BF16:
            raw = quants.quantize(x, T.BF16)
            enc, raw_dtype, ref = raw, T.BF16, quants.dequantize(raw, T.BF16).astype(np.float32)
        else:
            enc, raw_dtype, ref = encode(x, qtype)
        name = f"q.{qtype.name}"
        w.add_tensor(name, enc, raw_dtype=raw_dtype) if raw_dtype is not None else w.add_tensor(name, enc)
        write_f32(os.path.join(out, "expected", "quants", name + ".f32"), ref)
    for qtype in (T.Q8_0, T.Q4_0, T.Q4_1):
        raw = random_blocks(qtype, 3, 512)
        name = f"r.{qtype.name}"
        w.add_tensor(name, raw, raw_dtype=qtype)
        write_f32(os.path.join(out, "expected", "quants", name + ".f32"), quants.dequantize(raw, qtype))
    y = RNG.standard_normal((2, 3, 64)).astype(np.float32)
    w.add_tensor("q.F32_3d", y)
    write_f32(os.path.join(out, "expected", "quants", "q.F32_3d.f32"), y)
    w.add_tensor("u.IQ4_NL", RNG.integers(0, 256, size=(1, 18), dtype=np.uint8), raw_dtype=T.IQ4_NL)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_fuzz_seed(out):
    """A small GGUF with one key of every value type and tensors of several types."""
    w = gguf.GGUFWriter(os.path.join(out, "metadata.gguf"), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", -1.5)
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.strs", ["a", "", "ccc"])
    w.add_array("t.empty", [])
    w.add_tensor("a", RNG.standard_normal((4, 32)).astype(np.float32))
    w.add_tensor("b", quants.quantize(RNG.standard_normal((2, 64)).astype(np.float32), T.Q4_0), raw_dtype=T.Q4_0)
    w.add_tensor("c", random_blocks(T.Q6_K, 1, 256), raw_dtype=T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    write_quant_file(out)
    write_fuzz_seed(out)

    llama = hf_weights("llama", tied=True)
    write_gguf(os.path.join(out, "llama.gguf"), "llama", llama, out, "llama")
    write_hf_dir(os.path.join(out, "llama_hf"), "llama", llama, tied=True, shards=1)
    write_gguf(os.path.join(out, "llama_badshape.gguf"), "llama", llama, out, "", bad_shape="blk.1.ffn_up.weight",
               expected=False)
    write_gguf(os.path.join(out, "llama_missing.gguf"), "llama", llama, out, "", drop=("blk.1.ffn_down.weight",),
               expected=False)
    f = llama3_rope_factors(500000.0)
    write_gguf(os.path.join(out, "llama3_rope.gguf"), "llama", llama, out, "", rope_freqs=f, theta=500000.0,
               tokenizer=False, expected=False)
    g = f.copy()
    g[20] *= 1.5
    write_gguf(os.path.join(out, "llama3_rope_bad.gguf"), "llama", llama, out, "", rope_freqs=g, theta=500000.0,
               expected=False)
    write_gguf(os.path.join(out, "unknown_arch.gguf"), "llama", llama, out, "", arch_name="mamba", expected=False)

    qwen = hf_weights("qwen2", tied=False)
    write_gguf(os.path.join(out, "qwen2.gguf"), "qwen2", qwen, out, "qwen2")
    write_hf_dir(os.path.join(out, "qwen2_hf"), "qwen2", qwen, tied=False, shards=2)


if __name__ == "__main__":
    main()

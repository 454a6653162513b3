"""Cross-check of the pruning scores against an independent implementation.

From Hugging Face transformers' own modules we take every layer's Q and K after RoPE for the
whole prompt, recompute asl-method.md §2-§3 in float64 (window scores, pooling, ranks, the
relative rank variance from L_min over L_obs layers, the selection layer and the kept set), and
compare with what asl-cli's engine reports for the same token ids.
"""
import json
import subprocess

import pytest
import torch
import torch.nn.functional as F

W, S, L_OBS, TAU = 32, 7, 8, 0.3


@pytest.fixture(scope="module")
def hf(default_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model.parent, gguf_file=default_model.name)
    model = AutoModelForCausalLM.from_pretrained(
        default_model.parent, gguf_file=default_model.name, dtype=torch.float32
    )
    return tok, model.eval()


def qk_per_layer(model, ids):
    """Q [H, n, d] and K [Hkv, n, d] after RoPE at every layer, from HF's modules."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    x = torch.tensor([ids])
    pos = torch.arange(len(ids)).unsqueeze(0)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        cos, sin = model.model.rotary_emb(out.hidden_states[0], pos)
        cfg = model.config
        d = cfg.hidden_size // cfg.num_attention_heads
        res = []
        for layer, h in zip(model.model.layers, out.hidden_states[:-1]):
            hn = layer.input_layernorm(h)
            q = layer.self_attn.q_proj(hn).view(1, -1, cfg.num_attention_heads, d).transpose(1, 2)
            k = layer.self_attn.k_proj(hn).view(1, -1, cfg.num_key_value_heads, d).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            res.append((q[0].double(), k[0].double()))
    return res


def pooled_scores(q, k):
    H, n, d = q.shape
    G = H // k.shape[0]
    N = n - W
    kk = k.repeat_interleave(G, dim=0)
    z = q[:, N:, :] @ kk.transpose(1, 2) / d**0.5          # [H, W, n]
    mask = torch.ones(W, W, dtype=torch.bool).triu(1)
    z[:, :, N:] = z[:, :, N:].masked_fill(mask, float("-inf"))
    a = torch.softmax(z, dim=-1)
    u = a[:, :, :N].sum(1)                                # [H, N]
    return F.avg_pool1d(u.unsqueeze(1), S, 1, S // 2, count_include_pad=True).squeeze(1)


def ranks_of(s):
    order = sorted(range(len(s)), key=lambda j: (-s[j], j))  # descending, ties by lower index
    r = torch.empty(len(s), dtype=torch.float64)
    r[torch.tensor(order)] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    return r, order


def reference_asl(layers, n, select_k, min_layer):
    N = n - W
    k = min(select_k - W, N)
    ring, ratios, v0 = [], [], None
    for layer, (q, kk) in enumerate(layers):
        if layer < min_layer - L_OBS + 1:
            continue
        s = pooled_scores(q, kk).sum(0).tolist()
        r, order = ranks_of(s)
        ring = (ring + [r])[-L_OBS:]
        if layer < min_layer:
            continue
        x = torch.stack(ring)
        union = (x <= k).any(0)
        v = x[:, union].var(0, unbiased=False).mean().item()
        if v0 is None:
            v0 = v
            ratios.append(1.0)
            continue
        ratio = 0.0 if v0 == 0 else v / v0
        ratios.append(ratio)
        if ratio < TAU:
            kept = sorted(order[:k] + list(range(N, n)))
            return layer, ratios, kept
    return None, ratios, None


@pytest.mark.parametrize("n_target,select_k", [(900, 256), (1600, 512)])
def test_selection_matches_reference(hf, bin_dir, default_model, essays_dir, n_target, select_k):
    tok, model = hf
    text = " ".join(f.read_text() for f in sorted(essays_dir.glob("*.txt"))[3:6])
    ids = tok(text).input_ids[:n_target]
    L = model.config.num_hidden_layers
    min_layer = round(L * 10 / 32)
    ref_layer, ref_ratios, ref_kept = reference_asl(qk_per_layer(model, ids), len(ids), select_k, min_layer)

    cmd = [str(bin_dir / "asl-cli"), "logits", "--model", str(default_model), "--json",
           "--ids", ",".join(map(str, ids)), "--policy", "asl", "--select-k", str(select_k),
           "--kv-budget", "0", "--tau", str(TAU)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads(res.stdout)["pruning"]
    print("reference:", ref_layer, [round(r, 4) for r in ref_ratios])
    print("engine:   ", rep["selection_layer"], [round(r, 4) for r in rep["variance_ratios"]])
    assert len(rep["variance_ratios"]) == len(ref_ratios)
    for got, want in zip(rep["variance_ratios"], ref_ratios):
        assert got == pytest.approx(want, rel=1e-3, abs=1e-6)
    if ref_layer is None:
        assert rep["outcome"] == "none"
    else:
        assert rep["selection_layer"] == ref_layer
        assert rep["selected_positions"] == ref_kept
        assert rep["propagated_tokens"] == min(select_k, len(ids))

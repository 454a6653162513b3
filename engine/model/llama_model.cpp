#include "engine/model/llama_model.h"

#include <ATen/ATen.h>

#include <cmath>
#include <initializer_list>
#include <optional>
#include <vector>

#include "engine/model/linear.h"

namespace asl::model {

at::Tensor RopeInverseFrequencies(const ModelConfig& c) {
  const int64_t d = c.head_dim;
  // Computed in double then rounded, like transformers' float32 arange/pow path closely enough
  // that the float32 tables match to the last bit on the positions we test.
  at::Tensor exponents = at::arange(0, d, 2, at::kLong).to(at::kFloat) / static_cast<float>(d);
  at::Tensor inv_freq = 1.0 / at::pow(static_cast<float>(c.rope_theta), exponents);  // [d/2] float32
  const RopeScaling& s = c.rope_scaling;
  if (s.type == RopeScaling::Type::kLinear) {
    inv_freq = inv_freq / s.factor;
  } else if (s.type == RopeScaling::Type::kLlama3) {
    // transformers _compute_llama3_parameters: long wavelengths are slowed by `factor`, short ones
    // kept, and the band between interpolated smoothly.
    const double low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    const double high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
    at::Tensor smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    at::Tensor is_medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
    inv_freq = at::where(is_medium, smoothed, scaled);
  }
  return inv_freq.contiguous();
}

namespace {

// Whether the packed copies of projections that share an input can be concatenated: all packed in
// one block type and width, or none packed (then only the float tensors fuse).
bool SamePacking(std::initializer_list<const PackedWeight*> parts) {
  const PackedWeight& first = **parts.begin();
  for (const PackedWeight* p : parts) {
    if (p->defined() != first.defined()) return false;
    if (p->defined() && (p->type != first.type || p->cols != first.cols)) return false;
  }
  return true;
}

// Concatenates [N_i, K] tensors along rows and replaces each part by its row range of the result
// (a view: the parts' own storage is freed, so fusing holds no second copy of the weights).
at::Tensor FuseRows(std::initializer_list<at::Tensor*> parts) {
  std::vector<at::Tensor> list;
  for (at::Tensor* t : parts) list.push_back(*t);
  at::Tensor fused = at::cat(list, 0);
  int64_t row = 0;
  for (at::Tensor* t : parts) {
    const int64_t n = t->size(0);
    *t = fused.narrow(0, row, n);
    row += n;
  }
  return fused;
}

PackedWeight FusePacked(std::initializer_list<PackedWeight*> parts) {
  if (!(*parts.begin())->defined()) return {};
  PackedWeight out;
  out.type = (*parts.begin())->type;
  out.cols = (*parts.begin())->cols;
  std::vector<at::Tensor*> bytes;
  for (PackedWeight* p : parts) bytes.push_back(&p->bytes);
  if (bytes.size() == 2) {
    out.bytes = FuseRows({bytes[0], bytes[1]});
  } else {
    out.bytes = FuseRows({bytes[0], bytes[1], bytes[2]});
  }
  return out;
}

// Q/K/V and gate/up read the same input: one projection each (linear.h computes every output element
// in the same order whatever N is, so decode results are bit-identical to the separate projections).
void FuseProjections(LayerWeights& l) {
  const bool bias = l.bq.defined() && l.bk.defined() && l.bv.defined();
  const bool no_bias = !l.bq.defined() && !l.bk.defined() && !l.bv.defined();
  if (SamePacking({&l.packed_wq, &l.packed_wk, &l.packed_wv}) && (bias || no_bias) &&
      l.wq.scalar_type() == l.wk.scalar_type() && l.wk.scalar_type() == l.wv.scalar_type()) {
    l.wqkv = FuseRows({&l.wq, &l.wk, &l.wv});
    if (bias) l.bqkv = FuseRows({&l.bq, &l.bk, &l.bv});
    l.packed_qkv = FusePacked({&l.packed_wq, &l.packed_wk, &l.packed_wv});
  }
  if (SamePacking({&l.packed_gate, &l.packed_up}) && l.w_gate.scalar_type() == l.w_up.scalar_type()) {
    l.w_gate_up = FuseRows({&l.w_gate, &l.w_up});
    l.packed_gate_up = FusePacked({&l.packed_gate, &l.packed_up});
  }
}

}  // namespace

LlamaModel::LlamaModel(ModelConfig config, ModelWeights weights, Activations decode_activations)
    : config_(std::move(config)), weights_(std::move(weights)), activations_(decode_activations) {
  for (LayerWeights& l : weights_.layers) FuseProjections(l);
  inv_freq_ = RopeInverseFrequencies(config_).to(weights_.tok_embeddings.device());
  bool all_packed = weights_.packed_lm_head.defined();
  for (const LayerWeights& l : weights_.layers) {
    for (const PackedWeight* p : {&l.packed_wq, &l.packed_wk, &l.packed_wv, &l.packed_wo, &l.packed_gate, &l.packed_up,
                                  &l.packed_down}) {
      all_packed = all_packed && p->defined();
    }
  }
  decode_dtype_ = all_packed && device().is_cpu() ? at::kFloat : dtype();
}

at::Device LlamaModel::device() const { return weights_.tok_embeddings.device(); }
at::ScalarType LlamaModel::dtype() const { return weights_.tok_embeddings.scalar_type(); }

double LlamaModel::attention_scale() const { return 1.0 / std::sqrt(static_cast<double>(config_.head_dim)); }

at::Tensor LlamaModel::Embed(const at::Tensor& ids) const {
  return at::embedding(weights_.tok_embeddings, ids.to(device()));
}

Rope LlamaModel::RopeFor(const at::Tensor& positions) const {
  at::Tensor pos = positions.to(device(), at::kFloat);
  at::Tensor freqs = at::outer(pos, inv_freq_);          // [T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);         // [T, d]
  return Rope{emb.cos(), emb.sin()};
}

at::Tensor LlamaModel::RmsNorm(const at::Tensor& x, const at::Tensor& weight) const {
  at::Tensor h = x.to(at::kFloat);
  at::Tensor var = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(var + config_.rms_norm_eps);
  return weight * h.to(x.scalar_type());
}

static at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

static at::Tensor ApplyRope(const at::Tensor& x /*[T, h, d]*/, const Rope& rope) {
  at::Tensor cos = rope.cos.unsqueeze(1).to(x.scalar_type());  // [T, 1, d]
  at::Tensor sin = rope.sin.unsqueeze(1).to(x.scalar_type());
  return x * cos + RotateHalf(x) * sin;
}

Qkv LlamaModel::AttentionInputs(int layer, const at::Tensor& x, const Rope& rope, Rows rows) const {
  const LayerWeights& w = weights_.layers[layer];
  const int64_t T = x.size(0);
  at::Tensor h = RmsNorm(x, w.attn_norm);
  const int64_t H = config_.num_heads, Hkv = config_.num_kv_heads, d = config_.head_dim;
  at::Tensor q, k, v;
  if (w.wqkv.defined()) {  // one GEMM (prefill) or one streaming pass (decode) for all three
    at::Tensor qkv = Linear(h, w.wqkv, w.bqkv, w.packed_qkv, rows, activations_).view({T, H + 2 * Hkv, d});
    q = qkv.narrow(1, 0, H);
    k = qkv.narrow(1, H, Hkv);
    v = qkv.narrow(1, H + Hkv, Hkv).contiguous();  // q and k become new tensors in ApplyRope
  } else {
    q = Linear(h, w.wq, w.bq, w.packed_wq, rows, activations_).view({T, H, d});
    k = Linear(h, w.wk, w.bk, w.packed_wk, rows, activations_).view({T, Hkv, d});
    v = Linear(h, w.wv, w.bv, w.packed_wv, rows, activations_).view({T, Hkv, d});
  }
  return Qkv{ApplyRope(q, rope), ApplyRope(k, rope), v};
}

at::Tensor LlamaModel::CausalAttention(const Qkv& qkv) const { return CausalAttention(qkv.q, qkv.k, qkv.v); }

at::Tensor LlamaModel::CausalAttention(const at::Tensor& q_rows, const at::Tensor& k_rows, const at::Tensor& v_rows) const {
  const int64_t Tq = q_rows.size(0), Tk = k_rows.size(0);
  TORCH_CHECK(Tq <= Tk, "CausalAttention: ", Tq, " queries after ", Tk, " keys");
  // SDPA wants [B, heads, T, d]; enable_gqa lets Hkv < H without materialising repeated K/V.
  at::Tensor q = q_rows.transpose(0, 1).unsqueeze(0);
  at::Tensor k = k_rows.transpose(0, 1).unsqueeze(0);
  at::Tensor v = v_rows.transpose(0, 1).unsqueeze(0);
  std::optional<at::Tensor> mask;  // is_causal aligns the mask top-left, right only when Tq == Tk
  if (Tq < Tk) {
    at::Tensor qi = at::arange(Tk - Tq, Tk, at::TensorOptions().dtype(at::kLong).device(q.device())).unsqueeze(1);
    at::Tensor kj = at::arange(0, Tk, at::TensorOptions().dtype(at::kLong).device(q.device())).unsqueeze(0);
    mask = kj <= qi;  // [Tq, Tk], true = attend
  }
  at::Tensor out = at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/Tq == Tk,
                                                    /*scale=*/attention_scale(), /*enable_gqa=*/true);
  return out.squeeze(0).transpose(0, 1).reshape({Tq, config_.num_heads * config_.head_dim});
}

at::Tensor LlamaModel::AttentionAt(const at::Tensor& q_rows, const at::Tensor& k_rows, const at::Tensor& v_rows,
                                   const at::Tensor& q_positions) const {
  const int64_t Tq = q_rows.size(0), Tk = k_rows.size(0);
  at::Tensor q = q_rows.transpose(0, 1).unsqueeze(0);
  at::Tensor k = k_rows.transpose(0, 1).unsqueeze(0);
  at::Tensor v = v_rows.transpose(0, 1).unsqueeze(0);
  at::Tensor kj = at::arange(0, Tk, at::TensorOptions().dtype(at::kLong).device(q.device())).unsqueeze(0);
  at::Tensor mask = kj <= q_positions.to(q.device()).unsqueeze(1);  // [Tq, Tk], true = attend
  at::Tensor out = at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false,
                                                    /*scale=*/attention_scale(), /*enable_gqa=*/true);
  return out.squeeze(0).transpose(0, 1).reshape({Tq, config_.num_heads * config_.head_dim});
}

at::Tensor LlamaModel::AttentionOutput(int layer, const at::Tensor& attn, Rows rows) const {
  const LayerWeights& w = weights_.layers[layer];
  return Linear(attn, w.wo, {}, w.packed_wo, rows, activations_);
}

at::Tensor LlamaModel::Mlp(int layer, const at::Tensor& x, Rows rows) const {
  const LayerWeights& w = weights_.layers[layer];
  at::Tensor h = RmsNorm(x, w.ffn_norm);
  at::Tensor gate, up;
  if (w.w_gate_up.defined()) {
    const int64_t F = w.w_gate.size(0);
    at::Tensor gu = Linear(h, w.w_gate_up, {}, w.packed_gate_up, rows, activations_);
    gate = gu.narrow(1, 0, F);
    up = gu.narrow(1, F, F);
  } else {
    gate = Linear(h, w.w_gate, {}, w.packed_gate, rows, activations_);
    up = Linear(h, w.w_up, {}, w.packed_up, rows, activations_);
  }
  return Linear(at::silu(gate) * up, w.w_down, {}, w.packed_down, rows, activations_);
}

at::Tensor LlamaModel::Logits(const at::Tensor& x) const {
  at::Tensor h = RmsNorm(x, weights_.norm);
  return Linear(h, weights_.lm_head, {}, weights_.packed_lm_head, Rows::kPerSequence, activations_).to(at::kFloat);
}

}  // namespace asl::model

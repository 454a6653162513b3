// The Llama-family decoder (Llama 3.x, SmolLM2, Qwen2) as layer-level pieces, so the runner can
// stop, score and shrink each sequence between layers (asl-method.md §4, §8). The maths follows
// Hugging Face transformers' modeling_llama / modeling_qwen2: RMSNorm in float32, rotate_half RoPE
// with the model's scaling, GQA attention, SwiGLU MLP; Qwen2 adds q/k/v bias.
//
// Thread: const methods are safe from any thread; the runner calls them on the engine thread.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/model/model_config.h"
#include "engine/model/linear.h"
#include "engine/model/weights.h"

namespace asl::model {

// Rotary tables for a set of positions: cos, sin [T, d] in float32 (rotate_half layout).
struct Rope {
  at::Tensor cos;
  at::Tensor sin;
};

struct Qkv {
  at::Tensor q;  // [T, H, d], rotated
  at::Tensor k;  // [T, Hkv, d], rotated
  at::Tensor v;  // [T, Hkv, d]
};

class LlamaModel {
 public:
  // decode_activations: the streaming kernel's arithmetic for per-sequence rows over GGUF blocks
  // (linear.h); prompt rows always take at::linear.
  LlamaModel(ModelConfig config, ModelWeights weights, Activations decode_activations = Activations::kFloat32);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  at::Device device() const;
  at::ScalarType dtype() const;
  // The dtype of a decode step's hidden rows: float32 on a CPU run whose every projection streams
  // from GGUF blocks (linear.h; those compute in float32 whatever the run dtype, so a bfloat16 run's
  // decode stays in float32 instead of converting at every projection), else dtype().
  at::ScalarType decode_dtype() const { return decode_dtype_; }
  Activations decode_activations() const { return activations_; }

  // ids: [T] int64 -> hidden [T, hidden] in the run dtype.
  at::Tensor Embed(const at::Tensor& ids) const;
  // positions: [T] int64 (original positions, asl-method.md §4) -> tables on the model device.
  Rope RopeFor(const at::Tensor& positions) const;
  // `rows` says whether x holds prompt tokens (prefill) or one row per sequence (decode); it picks
  // the projection kernel (linear.h) and never changes what is computed beyond float rounding.
  // Pre-attention RMSNorm, projections, bias, RoPE. x: [T, hidden].
  Qkv AttentionInputs(int layer, const at::Tensor& x, const Rope& rope, Rows rows) const;
  // Output projection of the attention result attn [T, H*d] -> [T, hidden] (no residual).
  at::Tensor AttentionOutput(int layer, const at::Tensor& attn, Rows rows) const;
  // Post-attention RMSNorm + SwiGLU MLP: x [T, hidden] -> [T, hidden] (no residual).
  at::Tensor Mlp(int layer, const at::Tensor& x, Rows rows) const;
  // Final RMSNorm and LM head: x [B, hidden], one row per sequence -> logits [B, vocab] in float32.
  at::Tensor Logits(const at::Tensor& x) const;

  // Causal self-attention of one sequence's tokens among themselves (prefill): q [T, H, d],
  // k, v [T, Hkv, d] -> [T, H*d]. Uses libtorch's fused scaled-dot-product attention.
  at::Tensor CausalAttention(const Qkv& qkv) const;
  // The same for the last q.size(0) rows of a sequence whose first k.size(0) rows have keys (a
  // chunk of a prompt after the rows before it): q [Tq, H, d], k, v [Tk, Hkv, d], Tq <= Tk; query
  // i attends keys 0 .. Tk - Tq + i. -> [Tq, H*d]. Tq == Tk is exactly CausalAttention.
  at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const;
  // Queries at any positions over keys 0..Tk-1: query i attends keys 0 .. q_positions[i] ([Tq] int64,
  // each < Tk). -> [Tq, H*d].
  at::Tensor AttentionAt(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_positions) const;

  double attention_scale() const;

 private:
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) const;

  ModelConfig config_;
  ModelWeights weights_;
  at::Tensor inv_freq_;  // [d/2] float32, with the rope scaling applied
  at::ScalarType decode_dtype_;
  Activations activations_;
};

// Inverse RoPE frequencies for the config (transformers' rope init functions): [d/2] float32.
at::Tensor RopeInverseFrequencies(const ModelConfig& config);

}  // namespace asl::model

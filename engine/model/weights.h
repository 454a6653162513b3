// The weights of a Llama-family model, in Hugging Face layout ([out, in] linear weights, q/k rows in
// rotate_half order), already on the run device in the run dtype. GGUF loading undoes llama.cpp's
// q/k row permutation so one forward pass serves both sources.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "engine/model/model_config.h"

namespace asl::model {

// A linear weight as its GGUF file stores it (Q8_0, Q4_0 or Q4_1 blocks), rows in the float
// tensor's order, kept beside the float tensor on CPU runs: decode steps read these (4-6x fewer
// bytes than float32) and decode them exactly to the float32 tensor's values on the fly (linear.h);
// a bfloat16 run's prefill GEMMs read the rounded bfloat16 tensor, its decode these exact blocks.
// Undefined when the source is not block-quantized or the run is on GPU.
struct PackedWeight {
  uint32_t type = 0;   // GgmlType (quant.h)
  int64_t cols = 0;    // elements per row (the linear's in-features)
  at::Tensor bytes;    // uint8 [rows, row_bytes], contiguous
  bool defined() const { return bytes.defined(); }
};

struct LayerWeights {
  at::Tensor attn_norm;  // [hidden]
  at::Tensor wq;         // [H*d, hidden]
  at::Tensor wk;         // [Hkv*d, hidden]
  at::Tensor wv;         // [Hkv*d, hidden]
  at::Tensor bq, bk, bv; // [H*d], [Hkv*d], [Hkv*d]; undefined unless config.attention_bias
  at::Tensor wo;         // [hidden, H*d]
  at::Tensor ffn_norm;   // [hidden]
  at::Tensor w_gate;     // [ffn, hidden]
  at::Tensor w_up;       // [ffn, hidden]
  at::Tensor w_down;     // [hidden, ffn]
  // The packed copies of the seven projections (PackedWeight), where there are any.
  PackedWeight packed_wq, packed_wk, packed_wv, packed_wo, packed_gate, packed_up, packed_down;
  // Fused projections, set by LlamaModel (undefined as loaded): wqkv = [wq; wk; wv] ([(H+2Hkv)*d,
  // hidden]) with bqkv and packed_qkv, w_gate_up = [w_gate; w_up] with packed_gate_up. When set, the
  // parts above are row views of these (no second copy). Left undefined when the parts cannot share
  // one kernel (different block types, some packed and some not).
  at::Tensor wqkv, bqkv, w_gate_up;
  PackedWeight packed_qkv, packed_gate_up;
};

struct ModelWeights {
  at::Tensor tok_embeddings;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor norm;            // [hidden]
  at::Tensor lm_head;         // [vocab, hidden]; aliases tok_embeddings when tied
  PackedWeight packed_lm_head;
};

}  // namespace asl::model

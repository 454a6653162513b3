// The weights of a Llama-family model, in Hugging Face layout ([out, in] linear weights, q/k rows in
// rotate_half order), already on the run device in the run dtype. GGUF loading undoes llama.cpp's
// q/k row permutation so one forward pass serves both sources.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "engine/model/model_config.h"

namespace asl::model {

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
};

struct ModelWeights {
  at::Tensor tok_embeddings;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor norm;            // [hidden]
  at::Tensor lm_head;         // [vocab, hidden]; aliases tok_embeddings when tied
};

}  // namespace asl::model

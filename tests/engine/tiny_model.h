// A tiny Llama-shaped model with random weights and random prompts, for the engine's unit tests.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "engine/model/llama_model.h"

namespace asl {

// A Llama-shaped model with random weights: 6 layers, small enough for a unit test.
inline std::unique_ptr<model::LlamaModel> TinyModel() {
  model::ModelConfig c;
  c.name = "tiny-random";
  c.num_layers = 6;
  c.hidden_size = 64;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.intermediate_size = 128;
  c.vocab_size = 512;
  c.max_position_embeddings = 4096;
  EXPECT_TRUE(c.Validate("tiny").ok());
  at::manual_seed(1234);
  auto randn = [](std::vector<int64_t> shape, double scale) { return at::randn(shape, at::kFloat) * scale; };
  model::ModelWeights w;
  w.tok_embeddings = randn({c.vocab_size, c.hidden_size}, 1.0);
  const int64_t hd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
  const double s = 1.0 / std::sqrt(static_cast<double>(c.hidden_size));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    model::LayerWeights lw;
    lw.attn_norm = at::ones({c.hidden_size}) + randn({c.hidden_size}, 0.1);
    lw.ffn_norm = at::ones({c.hidden_size}) + randn({c.hidden_size}, 0.1);
    // Larger q/k weights give peaked attention, so the scores and ranks have structure to select.
    lw.wq = randn({hd, c.hidden_size}, 3 * s);
    lw.wk = randn({kvd, c.hidden_size}, 3 * s);
    lw.wv = randn({kvd, c.hidden_size}, s);
    lw.wo = randn({c.hidden_size, hd}, s);
    lw.w_gate = randn({c.intermediate_size, c.hidden_size}, s);
    lw.w_up = randn({c.intermediate_size, c.hidden_size}, s);
    lw.w_down = randn({c.hidden_size, c.intermediate_size}, s);
    w.layers.push_back(std::move(lw));
  }
  w.norm = at::ones({c.hidden_size});
  w.lm_head = randn({c.vocab_size, c.hidden_size}, s);
  return std::make_unique<model::LlamaModel>(c, std::move(w));
}

inline std::vector<int32_t> Prompt(int64_t n, uint64_t seed, int64_t vocab) {
  at::manual_seed(static_cast<int64_t>(seed));
  at::Tensor t = at::randint(1, vocab, {n}, at::kInt);
  return std::vector<int32_t>(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + n);
}

}  // namespace asl

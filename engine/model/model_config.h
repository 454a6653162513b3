// ModelConfig: the hyper-parameters of a Llama-family decoder, read from GGUF metadata
// (gguf_loader.h) or from a Hugging Face config.json (safetensors_loader.h).
#pragma once

#include <cstdint>
#include <string>

#include "engine/common/status.h"

namespace asl::model {

enum class Arch { kLlama, kQwen2 };
const char* ArchName(Arch arch);

// RoPE frequency scaling. kLlama3 is Llama 3.1's piecewise wavelength scaling
// (transformers' _compute_llama3_parameters).
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 } type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string name;                 // general.name or the directory name
  int64_t num_layers = 0;           // L
  int64_t hidden_size = 0;
  int64_t num_heads = 0;            // H (query heads)
  int64_t num_kv_heads = 0;         // Hkv
  int64_t head_dim = 0;             // d
  int64_t intermediate_size = 0;    // FFN width
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;  // context length
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // qwen2: bias on q, k, v projections

  int64_t group_size() const { return num_heads / num_kv_heads; }  // G = H / Hkv
  // Checks internal consistency (positive sizes, H % Hkv == 0, ...). `source` names the file.
  Status Validate(const std::string& source) const;
};

}  // namespace asl::model

// Loads a Llama-family model (config, weights, and the GGUF tokenizer if any) from a .gguf file or
// a Hugging Face directory (config.json + safetensors), into the layout of weights.h.
//
// Thread: free functions with no shared state; call from any thread. On failure nothing is kept
// (no partial LoadedModel escapes). Errors name the file, and for weights the tensor and the
// expected vs actual shape.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "engine/common/status.h"
#include "engine/model/gguf.h"
#include "engine/model/model_config.h"
#include "engine/model/weights.h"
#include "engine/tokenizer/tokenizer_spec.h"

namespace asl::model {

// Hyper-parameters from GGUF metadata ("<arch>.block_count", ...). An unknown
// general.architecture is kUnimplemented naming it; missing required keys are kDataLoss naming
// the key. Llama 3 RoPE scaling stored as a rope_freqs.weight tensor is recognised.
[[nodiscard]] StatusOr<ModelConfig> ConfigFromGguf(const GgufFile& gguf);

// Hyper-parameters from a Hugging Face config.json (`path` is the file or its directory).
// model_type llama or qwen2; rope_scaling / rope_parameters of type default, linear or llama3.
[[nodiscard]] StatusOr<ModelConfig> ConfigFromHfConfigJson(const std::string& path);

// The tokenizer stored in GGUF metadata (tokenizer.ggml.*, tokenizer.chat_template).
// kDataLoss when tokens are missing or ids are out of range.
[[nodiscard]] StatusOr<tok::TokenizerSpec> TokenizerSpecFromGguf(const GgufFile& gguf);

// The compute dtype a `model.dtype` name gives on `device`: "float32", "bfloat16", or "auto" =
// bfloat16 on a CPU with native bf16 dot products (CpuHasNativeBf16), float32 elsewhere (other CPUs,
// and CUDA, where bfloat16 is not yet verified here). InvalidArgument naming the value otherwise.
[[nodiscard]] StatusOr<at::ScalarType> ResolveDtype(const std::string& name, const at::Device& device);

struct LoadedModel {
  ModelConfig config;
  ModelWeights weights;
  std::optional<tok::TokenizerSpec> gguf_tokenizer;  // set for GGUF files with tokenizer metadata
  std::string tokenizer_dir;  // otherwise: where tokenizer.json is (the HF directory, or the GGUF's folder)
  std::string source;                                 // the path loaded
};

// `path` is a .gguf file or a Hugging Face directory. Weights are converted to `dtype` (float32 or
// bfloat16) and moved to `device`; GGUF q/k rows are un-permuted back to rotate_half order.
[[nodiscard]] StatusOr<LoadedModel> LoadModel(const std::string& path, const at::Device& device, at::ScalarType dtype);

}  // namespace asl::model

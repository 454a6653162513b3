#include "engine/model/model_config.h"

namespace asl::model {

const char* ArchName(Arch arch) {
  switch (arch) {
    case Arch::kLlama: return "llama";
    case Arch::kQwen2: return "qwen2";
  }
  return "unknown";
}

Status ModelConfig::Validate(const std::string& source) const {
  auto bad = [&](const std::string& what) { return InvalidArgument(source + ": invalid model config: " + what); };
  auto positive = [&](const char* field, int64_t v) -> Status {
    if (v <= 0) return bad(std::string(field) + " = " + std::to_string(v) + " must be positive");
    return Status::Ok();
  };
  ASL_RETURN_IF_ERROR(positive("num_layers", num_layers));
  ASL_RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  ASL_RETURN_IF_ERROR(positive("num_heads", num_heads));
  ASL_RETURN_IF_ERROR(positive("num_kv_heads", num_kv_heads));
  ASL_RETURN_IF_ERROR(positive("head_dim", head_dim));
  ASL_RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
  ASL_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  ASL_RETURN_IF_ERROR(positive("max_position_embeddings", max_position_embeddings));
  // Bounds far above any real model keep products such as H*d and vocab*hidden far from overflow.
  if (num_layers > 4096) return bad("num_layers = " + std::to_string(num_layers) + " is implausibly large");
  if (hidden_size > (1 << 20) || intermediate_size > (1 << 22) || head_dim > 4096 || num_heads > 4096) {
    return bad("a dimension is implausibly large");
  }
  if (vocab_size > (int64_t{1} << 31)) return bad("vocab_size = " + std::to_string(vocab_size) + " is implausibly large");
  if (num_heads % num_kv_heads != 0) {
    return bad("num_heads = " + std::to_string(num_heads) + " is not a multiple of num_kv_heads = " +
               std::to_string(num_kv_heads));
  }
  if (head_dim % 2 != 0) return bad("head_dim = " + std::to_string(head_dim) + " must be even for rotary embeddings");
  if (!(rms_norm_eps > 0)) return bad("rms_norm_eps must be positive");
  if (!(rope_theta > 0)) return bad("rope_theta must be positive");
  if (rope_scaling.type != RopeScaling::Type::kNone && !(rope_scaling.factor > 0)) {
    return bad("rope_scaling.factor must be positive");
  }
  if (rope_scaling.type == RopeScaling::Type::kLlama3 &&
      (!(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor) || !(rope_scaling.low_freq_factor > 0) ||
       rope_scaling.original_max_position_embeddings <= 0)) {
    return bad("llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor and a positive original context");
  }
  return Status::Ok();
}

}  // namespace asl::model

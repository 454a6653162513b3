// ggml tensor types and their dequantisation to float32. Block layouts follow ggml's
// ggml-common.h / ggml-quants.c exactly (little-endian hosts only, as ggml itself assumes).
//
// Thread: all functions are pure; Dequantize splits its work over libtorch's intra-op threads.
#pragma once

#include <cstdint>
#include <optional>

#include "engine/common/status.h"

namespace asl::model {

// ggml_type ids as stored in GGUF tensor infos (ggml.h). Ids 4, 5 and 31-33, 36-38 were removed
// from ggml and are rejected as unknown.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9,
  kQ2_K = 10, kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15,
  kIQ2_XXS = 16, kIQ2_XS = 17, kIQ3_XXS = 18, kIQ1_S = 19, kIQ4_NL = 20, kIQ3_S = 21, kIQ2_S = 22,
  kIQ4_XS = 23, kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27, kF64 = 28, kIQ1_M = 29, kBF16 = 30,
  kTQ1_0 = 34, kTQ2_0 = 35, kMXFP4 = 39,
};

// Elements per block and bytes per block of a known type.
struct GgmlTypeTraits {
  const char* name;
  int64_t block_size;
  int64_t type_size;
};

// Traits of a ggml type id; nullopt for an id ggml does not define (a corrupt file).
std::optional<GgmlTypeTraits> GgmlTypeInfo(uint32_t type);
// The type's name ("Q4_K"), or "type#<id>" for unknown ids. Never null.
const char* GgmlTypeName(uint32_t type);
// True for the types Dequantize handles: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K.
bool IsDequantizable(uint32_t type);

// Decodes num_elements values of `type` from `src` (src_nbytes bytes) into `dst`.
// num_elements must be a multiple of the type's block size and src_nbytes must equal the encoded
// size; otherwise kInvalidArgument. Unsupported types: kUnimplemented naming the type.
// On failure dst is left untouched.
[[nodiscard]] Status Dequantize(uint32_t type, const void* src, int64_t src_nbytes, int64_t num_elements, float* dst);

}  // namespace asl::model

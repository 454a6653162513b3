// Internal to engine/model's kernels: an IEEE half read from unaligned bytes (GGUF block scales),
// with F16C where the file is compiled with it (exact either way).
#pragma once

#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace asl::model {
namespace {

inline float HalfToFloat(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return c10::detail::fp16_ieee_to_fp32_value(h);
#endif
}

}  // namespace
}  // namespace asl::model

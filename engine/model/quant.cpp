#include "engine/model/quant.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

namespace asl::model {
namespace {

// Sizes from ggml's type_traits table (ggml.c); cross-checked with gguf-py's GGML_QUANT_SIZES.
struct Entry {
  uint32_t id;
  GgmlTypeTraits traits;
};
constexpr Entry kTypes[] = {
    {0, {"F32", 1, 4}},         {1, {"F16", 1, 2}},         {2, {"Q4_0", 32, 18}},
    {3, {"Q4_1", 32, 20}},      {6, {"Q5_0", 32, 22}},      {7, {"Q5_1", 32, 24}},
    {8, {"Q8_0", 32, 34}},      {9, {"Q8_1", 32, 40}},      {10, {"Q2_K", 256, 84}},
    {11, {"Q3_K", 256, 110}},   {12, {"Q4_K", 256, 144}},   {13, {"Q5_K", 256, 176}},
    {14, {"Q6_K", 256, 210}},   {15, {"Q8_K", 256, 292}},   {16, {"IQ2_XXS", 256, 66}},
    {17, {"IQ2_XS", 256, 74}},  {18, {"IQ3_XXS", 256, 98}}, {19, {"IQ1_S", 256, 50}},
    {20, {"IQ4_NL", 32, 18}},   {21, {"IQ3_S", 256, 110}},  {22, {"IQ2_S", 256, 82}},
    {23, {"IQ4_XS", 256, 136}}, {24, {"I8", 1, 1}},         {25, {"I16", 1, 2}},
    {26, {"I32", 1, 4}},        {27, {"I64", 1, 8}},        {28, {"F64", 1, 8}},
    {29, {"IQ1_M", 256, 56}},   {30, {"BF16", 1, 2}},       {34, {"TQ1_0", 256, 54}},
    {35, {"TQ2_0", 256, 66}},   {39, {"MXFP4", 32, 17}},
};

inline float Fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}

inline float Bf16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Each decoder turns one block (`b`, type_size bytes) into block_size floats at `y`.

void DecodeF32(const uint8_t* b, float* y) { std::memcpy(y, b, 4); }
void DecodeF16(const uint8_t* b, float* y) { *y = Fp16(b); }
void DecodeBF16(const uint8_t* b, float* y) { *y = Bf16(b); }

// block_q8_0 { ggml_half d; int8_t qs[32]; }
void DecodeQ8_0(const uint8_t* b, float* y) {
  const float d = Fp16(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = qs[j] * d;
}

// block_q4_0 { ggml_half d; uint8_t qs[16]; }: low nibbles are elements 0..15, high 16..31.
void DecodeQ4_0(const uint8_t* b, float* y) {
  const float d = Fp16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    const int x0 = (qs[j] & 0x0F) - 8;
    const int x1 = (qs[j] >> 4) - 8;
    y[j] = x0 * d;
    y[j + 16] = x1 * d;
  }
}

// block_q4_1 { ggml_half d; ggml_half m; uint8_t qs[16]; }
void DecodeQ4_1(const uint8_t* b, float* y) {
  const float d = Fp16(b);
  const float m = Fp16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    const int x0 = qs[j] & 0x0F;
    const int x1 = qs[j] >> 4;
    y[j] = x0 * d + m;
    y[j + 16] = x1 * d + m;
  }
}

// The 6-bit scale and min of sub-block j packed in block_q4_K.scales[12] (ggml's get_scale_min_k4).
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

// block_q4_K { ggml_half d; ggml_half dmin; uint8_t scales[12]; uint8_t qs[128]; }
void DecodeQ4_K(const uint8_t* b, float* y) {
  const float d = Fp16(b);
  const float min = Fp16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  int is = 0;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, m;
    ScaleMinK4(is + 0, scales, &sc, &m);
    const float d1 = d * sc;
    const float m1 = min * m;
    ScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * sc;
    const float m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

// block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; }
void DecodeQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = Fp16(b + 208);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const auto q1 = static_cast<int8_t>((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const auto q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const auto q3 = static_cast<int8_t>((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const auto q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * sc[is + 0] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

using DecodeFn = void (*)(const uint8_t*, float*);

DecodeFn DecoderFor(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32: return DecodeF32;
    case GgmlType::kF16: return DecodeF16;
    case GgmlType::kBF16: return DecodeBF16;
    case GgmlType::kQ8_0: return DecodeQ8_0;
    case GgmlType::kQ4_0: return DecodeQ4_0;
    case GgmlType::kQ4_1: return DecodeQ4_1;
    case GgmlType::kQ4_K: return DecodeQ4_K;
    case GgmlType::kQ6_K: return DecodeQ6_K;
    default: return nullptr;
  }
}

}  // namespace

std::optional<GgmlTypeTraits> GgmlTypeInfo(uint32_t type) {
  for (const Entry& e : kTypes) {
    if (e.id == type) return e.traits;
  }
  return std::nullopt;
}

const char* GgmlTypeName(uint32_t type) {
  if (auto info = GgmlTypeInfo(type)) return info->name;
  // Unknown ids are rare (corrupt files); a small ring of buffers keeps the pointer valid for the
  // message being built without allocating per call site.
  static thread_local char buf[4][24];
  static thread_local int next = 0;
  char* out = buf[next++ % 4];
  std::snprintf(out, sizeof(buf[0]), "type#%u", type);
  return out;
}

bool IsDequantizable(uint32_t type) { return DecoderFor(type) != nullptr; }

Status Dequantize(uint32_t type, const void* src, int64_t src_nbytes, int64_t num_elements, float* dst) {
  const auto info = GgmlTypeInfo(type);
  if (!info) return InvalidArgument(std::string("unknown ggml type ") + GgmlTypeName(type));
  const DecodeFn decode = DecoderFor(type);
  if (decode == nullptr) {
    return Unimplemented(std::string("dequantisation of ggml type ") + info->name + " is not supported");
  }
  if (num_elements < 0 || num_elements % info->block_size != 0) {
    return InvalidArgument(std::string(info->name) + ": " + std::to_string(num_elements) +
                           " elements is not a multiple of the block size " + std::to_string(info->block_size));
  }
  const int64_t num_blocks = num_elements / info->block_size;
  if (src_nbytes != num_blocks * info->type_size) {
    return InvalidArgument(std::string(info->name) + ": " + std::to_string(src_nbytes) + " bytes for " +
                           std::to_string(num_elements) + " elements, expected " +
                           std::to_string(num_blocks * info->type_size));
  }
  const auto* in = static_cast<const uint8_t*>(src);
  const int64_t bs = info->block_size;
  const int64_t ts = info->type_size;
  // ~16k elements per task: large enough to amortise the scheduling, small enough to balance.
  const int64_t grain = std::max<int64_t>(1, 16384 / bs);
  at::parallel_for(0, num_blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) decode(in + i * ts, dst + i * bs);
  });
  return Status::Ok();
}

}  // namespace asl::model

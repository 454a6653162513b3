// Internal to engine/model: the streaming linear kernel (see linear.h). Compiled twice, by
// linear.cpp with the build's default flags and by linear_avx2.cpp with -mavx2 -mfma -mf16c; linear.cpp
// picks one at run time. Internal linkage throughout, and at::vec's types live in a per-capability
// inline namespace, so the two copies never merge at link time (as engine/kv/paged_attention_kernel.h).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Half.h>

#include "engine/common/parallel.h"
#include "engine/model/half_bits.h"

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace asl::model {

struct LinearArgs {
  int64_t M, N, K;
  const float* x;         // [M, K]
  const float* w;         // [N, K] float32, or null when `packed` is set
  const uint8_t* packed;  // [N, row_bytes] GGUF blocks of `packed_type`, or null
  uint32_t packed_type;   // GgmlType: Q8_0, Q4_0 or Q4_1
  int64_t row_bytes;
  const float* bias;      // [N] or null
  float* out;             // [M, N]
};

// Defined in linear_avx2.cpp (x86-64 builds only); call only where the CPU has AVX2, FMA and F16C.
void StreamingLinearAvx2(const LinearArgs& a);

namespace {

using LVec = at::vec::Vectorized<float>;
constexpr int64_t kLW = LVec::size();
constexpr int64_t kAcc = 4;    // accumulators per output element: k-step index mod 4
constexpr int64_t kTileM = 2;  // input rows of a fused packed tile: kTileM * kAcc accumulators + loads fit 16 ymm
constexpr int64_t kMR = 4;     // input rows per float tile
constexpr int64_t kNR = 2;     // weight rows per float tile: kMR * kNR accumulators of a pass + loads fit 16 ymm
constexpr uint32_t kTypeQ4_0 = 2, kTypeQ4_1 = 3, kTypeQ8_0 = 8;  // GgmlType ids (quant.h)

// The fixed arithmetic of one output element, whatever kernel path, tile shape or thread computes
// it: products w[k] * x[k] of the k-steps of kLW elements accumulate by fused multiply-add into
// accumulator (step mod 4), in k order; the four are added as (a0 + a1) + (a2 + a3), the lanes
// left to right, then the scalar tail, then the bias.
inline float Finish(const LVec acc[kAcc], const float* w, const float* x, int64_t k_tail, int64_t K,
                    const float* bias) {
  float lanes[kLW];
  ((acc[0] + acc[1]) + (acc[2] + acc[3])).store(lanes);
  float s = 0.0f;
  for (int64_t l = 0; l < kLW; ++l) s += lanes[l];
  for (int64_t k = k_tail; k < K; ++k) s += w[k] * x[k];
  if (bias != nullptr) s += *bias;
  return s;
}

// Weight rows n0 .. n0 + NR - 1 (float, K apart from w) against input rows m0 .. m0 + MR - 1, in four
// passes over k, one per accumulator: pass r adds k-steps r, r + 4, r + 8, ... into accumulator r
// of every output of the tile. The MR * NR accumulators of a pass stay in registers, each weight
// vector loaded serves MR rows and each input vector NR rows; the result is the fixed arithmetic.
template <int MR, int NR>
inline void FloatTile(const LinearArgs& a, const float* w, int64_t n0, int64_t m0) {
  const int64_t K = a.K, K8 = K - K % kLW;
  const float* x[MR];
  for (int i = 0; i < MR; ++i) x[i] = a.x + (m0 + i) * K;
  LVec acc[MR][NR][kAcc];
  for (int r = 0; r < kAcc; ++r) {
    LVec c[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
      for (int j = 0; j < NR; ++j) c[i][j] = LVec(0.0f);
    }
    for (int64_t k = r * kLW; k < K8; k += kAcc * kLW) {
      LVec wv[NR];
#pragma GCC unroll 2
      for (int j = 0; j < NR; ++j) wv[j] = LVec::loadu(w + j * K + k);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const LVec xv = LVec::loadu(x[i] + k);
#pragma GCC unroll 2
        for (int j = 0; j < NR; ++j) c[i][j] = at::vec::fmadd(wv[j], xv, c[i][j]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) acc[i][j][r] = c[i][j];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      a.out[(m0 + i) * a.N + n0 + j] = Finish(acc[i][j], w + j * K, x[i], K8, K, a.bias ? a.bias + n0 + j : nullptr);
    }
  }
}

template <int MR>
inline void FloatTilesOfRows(const LinearArgs& a, const float* w, int64_t n0, int64_t count, int64_t m0) {
  int64_t g = 0;
  for (; g + kNR <= count; g += kNR) FloatTile<MR, kNR>(a, w + g * a.K, n0 + g, m0);
  for (; g < count; ++g) FloatTile<MR, 1>(a, w + g * a.K, n0 + g, m0);
}

// Weight rows n0 .. n0 + count - 1 (float, rows of K at w) against every input row. Each tile of
// input rows is computed against the whole group while it is in L1, and the group (at most
// GroupRows(K) rows, sized for L2) is what is read from L2: with many input rows they do not fit L1
// and would otherwise be streamed from L2 or L3 once per weight row.
inline void FloatRows(const LinearArgs& a, const float* w, int64_t n0, int64_t count) {
  int64_t m0 = 0;
  for (; m0 + kMR <= a.M; m0 += kMR) FloatTilesOfRows<kMR>(a, w, n0, count, m0);
  switch (a.M - m0) {
    case 3: FloatTilesOfRows<3>(a, w, n0, count, m0); break;
    case 2: FloatTilesOfRows<2>(a, w, n0, count, m0); break;
    case 1: FloatTilesOfRows<1>(a, w, n0, count, m0); break;
    default: break;
  }
}

// Weight rows per group: 128 KiB of float weights (half of a small L2).
inline int64_t GroupRows(int64_t K) { return std::max<int64_t>(1, (128 << 10) / (4 * std::max<int64_t>(1, K))); }

// Block layouts (ggml-common.h): Q8_0 { half d; int8 qs[32] } = d * q; Q4_0 { half d; u8 qs[16] }
// = (q - 8) * d; Q4_1 { half d; half m; u8 qs[16] } = q * d + m, low nibbles elements 0..15, high
// 16..31. Decoded values are exactly quant.cpp's Dequantize (the same products and sums, never
// fused: this file is compiled with -ffp-contract=off).
inline int64_t BlockBytes(uint32_t type) { return type == kTypeQ8_0 ? 34 : type == kTypeQ4_1 ? 20 : 18; }

#if defined(CPU_CAPABILITY_AVX2)

// AVX2: each block is decoded into four vectors of 8 weights in registers and multiplied into the
// accumulators at once (sub-vector s of a block is k-step 4b + s, so accumulator s). The block
// type is a template parameter and the short loops are unrolled so everything stays in registers.
template <uint32_t TYPE>
inline void DecodeBlock(const uint8_t* blk, __m256 w[kAcc]) {
  const __m256 dv = _mm256_set1_ps(HalfToFloat(blk));
  if constexpr (TYPE == kTypeQ8_0) {
#pragma GCC unroll 4
    for (int s = 0; s < kAcc; ++s) {
      const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * s)));
      w[s] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), dv);
    }
  } else {
    constexpr bool q41 = TYPE == kTypeQ4_1;
    const __m128i low4 = _mm_set1_epi8(0x0F);
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (q41 ? 4 : 2)));
    const __m128i lo = _mm_and_si128(bytes, low4), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
    const __m256i q[kAcc] = {_mm256_cvtepu8_epi32(lo), _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)),
                             _mm256_cvtepu8_epi32(hi), _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))};
    if constexpr (q41) {
      const __m256 mv = _mm256_set1_ps(HalfToFloat(blk + 2));
#pragma GCC unroll 4
      for (int s = 0; s < kAcc; ++s) w[s] = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q[s]), dv), mv);
    } else {
      const __m256i eight = _mm256_set1_epi32(8);
#pragma GCC unroll 4
      for (int s = 0; s < kAcc; ++s) w[s] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q[s], eight)), dv);
    }
  }
}

template <uint32_t TYPE, int MM>
inline void PackedTile(const LinearArgs& a, const uint8_t* row, int64_t n, int64_t m0) {
  constexpr int64_t bb = TYPE == kTypeQ8_0 ? 34 : TYPE == kTypeQ4_1 ? 20 : 18;
  const int64_t K = a.K;
  const float* x[MM];
#pragma GCC unroll 2
  for (int j = 0; j < MM; ++j) x[j] = a.x + (m0 + j) * K;
  __m256 acc[MM][kAcc];
#pragma GCC unroll 2
  for (int j = 0; j < MM; ++j) {
#pragma GCC unroll 4
    for (int s = 0; s < kAcc; ++s) acc[j][s] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < K; k += 32, row += bb) {
    __m256 w[kAcc];
    DecodeBlock<TYPE>(row, w);
#pragma GCC unroll 2
    for (int j = 0; j < MM; ++j) {
#pragma GCC unroll 4
      for (int s = 0; s < kAcc; ++s) acc[j][s] = _mm256_fmadd_ps(w[s], _mm256_loadu_ps(x[j] + k + 8 * s), acc[j][s]);
    }
  }
  for (int j = 0; j < MM; ++j) {
    const LVec v[kAcc] = {LVec(acc[j][0]), LVec(acc[j][1]), LVec(acc[j][2]), LVec(acc[j][3])};
    a.out[(m0 + j) * a.N + n] = Finish(v, nullptr, nullptr, K, K, a.bias ? a.bias + n : nullptr);
  }
}

// One or two input rows: each weight row is decoded and multiplied in registers. More: a group of
// rows is decoded once into scratch and computed as float weights (the same values and the same
// arithmetic).
template <uint32_t TYPE>
inline void PackedRowsOf(const LinearArgs& a, int64_t n0, int64_t count, float* scratch) {
  constexpr int64_t bb = TYPE == kTypeQ8_0 ? 34 : TYPE == kTypeQ4_1 ? 20 : 18;
  if (a.M <= kTileM) {
    for (int64_t n = n0; n < n0 + count; ++n) {
      const uint8_t* row = a.packed + n * a.row_bytes;
      if (a.M == kTileM) PackedTile<TYPE, kTileM>(a, row, n, 0);
      else PackedTile<TYPE, 1>(a, row, n, 0);
    }
    return;
  }
  for (int64_t g = 0; g < count; ++g) {
    const uint8_t* row = a.packed + (n0 + g) * a.row_bytes;
    float* y = scratch + g * a.K;
    for (int64_t k = 0; k < a.K; k += 32, row += bb) {
      __m256 w[kAcc];
      DecodeBlock<TYPE>(row, w);
#pragma GCC unroll 4
      for (int s = 0; s < kAcc; ++s) _mm256_storeu_ps(y + k + 8 * s, w[s]);
    }
  }
  FloatRows(a, scratch, n0, count);
}

// Whether PackedRows decodes into scratch for M input rows (AVX2: only for more than kTileM).
inline bool PackedRowsUseScratch(int64_t M) { return M > kTileM; }

inline void PackedRows(const LinearArgs& a, int64_t n0, int64_t count, float* scratch) {
  switch (a.packed_type) {
    case kTypeQ8_0: PackedRowsOf<kTypeQ8_0>(a, n0, count, scratch); break;
    case kTypeQ4_0: PackedRowsOf<kTypeQ4_0>(a, n0, count, scratch); break;
    default: PackedRowsOf<kTypeQ4_1>(a, n0, count, scratch); break;
  }
}

#else

// Baseline build: the row is decoded into scratch, then computed as float weights.
inline void DecodeRow(uint32_t type, const uint8_t* src, int64_t K, float* y) {
  const int64_t bb = BlockBytes(type);
  for (int64_t b = 0; b < K / 32; ++b, y += 32, src += bb) {
    const float d = HalfToFloat(src);
    if (type == kTypeQ8_0) {
      const auto* qs = reinterpret_cast<const int8_t*>(src + 2);
      for (int j = 0; j < 32; ++j) y[j] = qs[j] * d;
      continue;
    }
    const bool q41 = type == kTypeQ4_1;
    const float m = q41 ? HalfToFloat(src + 2) : 0.0f;
    const uint8_t* qs = src + (q41 ? 4 : 2);
    for (int j = 0; j < 16; ++j) {
      const int x0 = qs[j] & 0x0F, x1 = qs[j] >> 4;
      y[j] = q41 ? x0 * d + m : (x0 - 8) * d;
      y[j + 16] = q41 ? x1 * d + m : (x1 - 8) * d;
    }
  }
}

// The baseline decodes every group into scratch, whatever the number of input rows.
inline bool PackedRowsUseScratch(int64_t) { return true; }

inline void PackedRows(const LinearArgs& a, int64_t n0, int64_t count, float* scratch) {
  for (int64_t g = 0; g < count; ++g) DecodeRow(a.packed_type, a.packed + (n0 + g) * a.row_bytes, a.K, scratch + g * a.K);
  FloatRows(a, scratch, n0, count);
}

#endif

// Per-thread scratch for a decoded weight row (internal linkage, not std::vector: see
// engine/kv/paged_attention_kernel.h).
struct RowScratch {
  explicit RowScratch(int64_t n) : p(new float[static_cast<size_t>(n)]) {}
  ~RowScratch() { delete[] p; }
  RowScratch(const RowScratch&) = delete;
  RowScratch& operator=(const RowScratch&) = delete;
  float* p;
};

inline void RunStreamingLinear(const LinearArgs& a) {
  // A task of at least ~64 KiB of float weights, so thread start-up stays small beside the reading.
  const int64_t grain = std::max<int64_t>(1, (16 << 10) / std::max<int64_t>(1, a.K));
  const int64_t group = GroupRows(a.K);
  asl::ParallelFor(at::get_num_threads(), 0, a.N, grain, [&](int64_t begin, int64_t end) {
    if (a.packed != nullptr) {
      // Scratch for a decoded group only where PackedRows uses it.
      RowScratch scratch(PackedRowsUseScratch(a.M) ? std::min(group, end - begin) * a.K : 0);
      for (int64_t n = begin; n < end; n += group) PackedRows(a, n, std::min(group, end - n), scratch.p);
      return;
    }
    for (int64_t n = begin; n < end; n += group) FloatRows(a, a.w + n * a.K, n, std::min(group, end - n));
  });
}

}  // namespace
}  // namespace asl::model

// Internal to engine/model: the streaming kernel with int8 activations (linear.h,
// Activations::kInt8), ggml's "vec_dot with q8" scheme. Compiled three times: by linear.cpp with the
// build's default flags (the scalar reference), by linear_avx2.cpp (AVX2: maddubs + madd) and by
// linear_avx512.cpp (AVX-512 VL + VNNI: vpdpbusd on 256-bit vectors); linear.cpp picks one at run
// time. Internal linkage throughout, so the copies never merge at link time.
//
// The fixed arithmetic of one output element y[m][n], the same on every path, tile and thread count
// (so a sequence's decode is independent of its batch-mates and of the CPU's instruction set):
//   - x's row m is quantised per block of 32 (QuantizeRowsInt8, linear.cpp): q = nearbyint(x / d),
//     d = max|x| / 127, and s = d * sum(q) (Q4_1's minimum term).
//   - Weight block b holds 32 small integers w (Q8_0: q; Q4_0: q - 8; Q4_1: q, plus d_w * min) and the
//     half d_w. Lane l (0..7) of block b is the exact integer sum of w[j] * q[j] over j = 4l .. 4l+3
//     (vpdpbusd's grouping; AVX2's maddubs + madd give the same integers: no pair sum reaches int16's
//     limit on the operands each type uses).
//   - acc[l] = fma(d_w * d_x, float(lane l), acc[l]), blocks in order; Q4_1 also sm = fma(m_w, s_x, sm).
//   - y = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7)), then + sm, then + bias.
// Integer sums are exact, so only that float sequence matters; every file compiling this header
// has -ffp-contract=off, and the fused multiply-adds are explicit.
#pragma once

#include <ATen/Parallel.h>

#include "engine/common/parallel.h"
#include "engine/model/half_bits.h"

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#define ASL_INT8_KERNEL_SIMD 1
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace asl::model {

struct Int8LinearArgs {
  int64_t M, N, K;        // K a multiple of 32
  const int8_t* xq;       // [M, K] quantised activations
  const float* xd;        // [M, K / 32] their scales
  const float* xs;        // [M, K / 32] scale * sum of the block's q
  const uint8_t* packed;  // [N, row_bytes] GGUF blocks of `packed_type`
  uint32_t packed_type;   // GgmlType: Q8_0, Q4_0 or Q4_1
  int64_t row_bytes;
  const float* bias;      // [N] or null
  float* out;             // [M, N]
};

// Defined in linear_avx2.cpp and linear_avx512.cpp (x86-64 builds only); call only where the CPU has
// the instruction sets (cpu_isa.h: kAvx2, kAvx512Vnni).
void StreamingLinearInt8Avx2(const Int8LinearArgs& a);
void StreamingLinearInt8Avx512Vnni(const Int8LinearArgs& a);

namespace {
namespace int8k {

constexpr uint32_t kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8;  // GgmlType ids (quant.h)
constexpr int64_t kRowTile = 4;                      // input rows computed per pass over a weight row

template <uint32_t TYPE>
constexpr int64_t BlockBytes() {
  return TYPE == kQ8_0 ? 34 : TYPE == kQ4_1 ? 20 : 18;
}

inline float Finish(const float v[8], float sm, const float* bias) {
  float y = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
  y = y + sm;
  if (bias != nullptr) y = y + *bias;
  return y;
}

#if defined(ASL_INT8_KERNEL_SIMD)

#ifndef ASL_INT8_NT
#define ASL_INT8_NT 1
#endif
constexpr int kWeightTile = ASL_INT8_NT;  // weight rows computed together: each activation vector serves both

// The 32 weights of a block as signed bytes (Q4_1: 0..15; low nibbles are elements 0..15, high
// nibbles 16..31).
template <uint32_t TYPE>
inline __m256i Weights(const uint8_t* blk) {
  if constexpr (TYPE == kQ8_0) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  } else {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (TYPE == kQ4_1 ? 4 : 2)));
    const __m128i low4 = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low4), _mm_and_si128(bytes, low4));
  }
}

// acc + the eight lane sums of u[j] * s[j] (j = 4l .. 4l+3), u unsigned and s signed bytes. AVX2's
// maddubs sums pairs into int16: callers keep |u * s| pairs below 2^15.
inline __m256i DotLanes(__m256i acc, __m256i u, __m256i s) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm256_dpbusd_epi32(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// What an activation block brings to every weight row of a tile: its bytes and its scale, and
// per type what turns the weights' bytes into the signed products.
struct XBlock {
  __m256i q;     // the signed q
  __m256i aux;   // Q4_0: -8 * (lane sums of q); Q8_0 on VNNI: q + 128 as unsigned bytes
  __m256 d;      // d_x, broadcast
  float s;       // s_x (Q4_1)
};

struct WBlock {
  __m256i w;     // Q4_0 / Q4_1: the nibbles (unsigned); Q8_0: the signed q
  __m256i aux;   // Q8_0 on VNNI: -128 * (lane sums of w); on AVX2: |w|
  __m256 d;      // d_w, broadcast
  float m;       // d_w * min (Q4_1)
};

template <uint32_t TYPE>
inline XBlock LoadX(const Int8LinearArgs& a, int64_t m, int64_t b) {
  const int64_t nb = a.K / 32;
  XBlock x;
  x.q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + m * a.K + b * 32));
  x.d = _mm256_set1_ps(a.xd[m * nb + b]);
  x.s = a.xs[m * nb + b];
  if constexpr (TYPE == kQ4_0) {
    x.aux = _mm256_sub_epi32(_mm256_setzero_si256(), DotLanes(_mm256_setzero_si256(), _mm256_set1_epi8(8), x.q));
  } else if constexpr (TYPE == kQ8_0) {
    x.aux = _mm256_xor_si256(x.q, _mm256_set1_epi8(static_cast<char>(0x80)));
  } else {
    x.aux = _mm256_setzero_si256();
  }
  return x;
}

template <uint32_t TYPE>
inline WBlock LoadW(const uint8_t* blk) {
  WBlock w;
  w.w = Weights<TYPE>(blk);
  w.d = _mm256_set1_ps(HalfToFloat(blk));
  w.m = TYPE == kQ4_1 ? HalfToFloat(blk + 2) : 0.0f;
  if constexpr (TYPE == kQ8_0) {
#if defined(CPU_CAPABILITY_AVX512)
    w.aux = _mm256_sub_epi32(_mm256_setzero_si256(),
                             DotLanes(_mm256_setzero_si256(), _mm256_set1_epi8(static_cast<char>(0x80)), w.w));
#else
    w.aux = _mm256_sign_epi8(w.w, w.w);
#endif
  } else {
    w.aux = _mm256_setzero_si256();
  }
  return w;
}

// The integer lanes of one (activation block, weight block) pair.
template <uint32_t TYPE>
inline __m256i Lanes(const XBlock& x, const WBlock& w) {
  if constexpr (TYPE == kQ4_1) {
    return DotLanes(_mm256_setzero_si256(), w.w, x.q);  // nibble * q: pairs below 2 * 15 * 127
  } else if constexpr (TYPE == kQ4_0) {
    return DotLanes(x.aux, w.w, x.q);  // (nibble - 8) * q = nibble * q - 8 * q
  } else {
#if defined(CPU_CAPABILITY_AVX512)
    return DotLanes(w.aux, x.aux, w.w);  // (q + 128) * w - 128 * w
#else
    return DotLanes(_mm256_setzero_si256(), w.aux, _mm256_sign_epi8(x.q, w.w));  // |w| * (q * sign w)
#endif
  }
}

// Input rows m0 .. m0 + MT - 1 against weight row n: each weight block is expanded once for the MT
// rows, whose accumulators stay in registers. (Two weight rows per pass, sharing each activation
// block, measured no faster: the step is bound by the per-pair dot, convert and scale.)
template <uint32_t TYPE, int MT>
inline void Tile(const Int8LinearArgs& a, int64_t n, int64_t m0) {
  const int64_t nb = a.K / 32;
  __m256 acc[MT];
  float sm[MT];
#pragma GCC unroll 4
  for (int i = 0; i < MT; ++i) {
    acc[i] = _mm256_setzero_ps();
    sm[i] = 0.0f;
  }
  const uint8_t* row = a.packed + n * a.row_bytes;
  for (int64_t b = 0; b < nb; ++b) {
    const WBlock w = LoadW<TYPE>(row + b * BlockBytes<TYPE>());
#pragma GCC unroll 4
    for (int i = 0; i < MT; ++i) {
      const XBlock x = LoadX<TYPE>(a, m0 + i, b);
      const __m256 scale = _mm256_mul_ps(w.d, x.d);
      acc[i] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(Lanes<TYPE>(x, w)), acc[i]);
      if constexpr (TYPE == kQ4_1) sm[i] = std::fma(w.m, x.s, sm[i]);
    }
  }
  for (int i = 0; i < MT; ++i) {
    float v[8];
    _mm256_storeu_ps(v, acc[i]);
    a.out[(m0 + i) * a.N + n] = Finish(v, sm[i], a.bias ? a.bias + n : nullptr);
  }
}

#else

// The scalar reference: the same integers and the same float sequence, one lane at a time.
template <uint32_t TYPE, int MT>
inline void Tile(const Int8LinearArgs& a, int64_t n, int64_t m0) {
  const int64_t nb = a.K / 32;
  const uint8_t* row = a.packed + n * a.row_bytes;
  for (int i = 0; i < MT; ++i) {
    const int8_t* x = a.xq + (m0 + i) * a.K;
    const float* xd = a.xd + (m0 + i) * nb;
    const float* xs = a.xs + (m0 + i) * nb;
    float acc[8] = {};
    float sm = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * BlockBytes<TYPE>();
      int w[32];
      if constexpr (TYPE == kQ8_0) {
        for (int j = 0; j < 32; ++j) w[j] = static_cast<int8_t>(blk[2 + j]);
      } else {
        const uint8_t* qs = blk + (TYPE == kQ4_1 ? 4 : 2);
        const int offset = TYPE == kQ4_0 ? 8 : 0;
        for (int j = 0; j < 16; ++j) {
          w[j] = (qs[j] & 0x0F) - offset;
          w[j + 16] = (qs[j] >> 4) - offset;
        }
      }
      const float scale = HalfToFloat(blk) * xd[b];
      for (int l = 0; l < 8; ++l) {
        int32_t lane = 0;
        for (int j = 4 * l; j < 4 * l + 4; ++j) lane += w[j] * x[b * 32 + j];
        acc[l] = std::fma(scale, static_cast<float>(lane), acc[l]);
      }
      if constexpr (TYPE == kQ4_1) sm = std::fma(HalfToFloat(blk + 2), xs[b], sm);
    }
    a.out[(m0 + i) * a.N + n] = Finish(acc, sm, a.bias ? a.bias + n : nullptr);
  }
}

#endif

// Weight rows n0 .. n1 - 1 against every input row, in tiles of kRowTile input rows.
template <uint32_t TYPE>
inline void Rows(const Int8LinearArgs& a, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t m0 = 0;
    for (; m0 + kRowTile <= a.M; m0 += kRowTile) Tile<TYPE, kRowTile>(a, n, m0);
    switch (a.M - m0) {
      case 3: Tile<TYPE, 3>(a, n, m0); break;
      case 2: Tile<TYPE, 2>(a, n, m0); break;
      case 1: Tile<TYPE, 1>(a, n, m0); break;
      default: break;
    }
  }
}

inline void Run(const Int8LinearArgs& a) {
  // A task of at least ~16 KiB of blocks, so thread start-up stays small beside the reading.
  const int64_t grain = std::max<int64_t>(1, (16 << 10) / std::max<int64_t>(1, a.row_bytes));
  asl::ParallelFor(at::get_num_threads(), 0, a.N, grain, [&](int64_t begin, int64_t end) {
    switch (a.packed_type) {
      case kQ8_0: Rows<kQ8_0>(a, begin, end); break;
      case kQ4_0: Rows<kQ4_0>(a, begin, end); break;
      default: Rows<kQ4_1>(a, begin, end); break;
    }
  });
}

}  // namespace int8k
}  // namespace
}  // namespace asl::model

// Internal to engine/kv: the CPU paged decode attention kernel (see paged_attention.h for the
// contract). This header is compiled twice, by paged_attention.cpp with the build's default flags
// and by paged_attention_avx2.cpp with -mavx2 -mfma, and paged_attention.cpp picks one at run time.
// Everything here has internal linkage (anonymous namespace) and at::vec's types live in a
// per-capability inline namespace, so the two copies never merge at link time.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "engine/common/parallel.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

namespace asl::kv {

// Raw views of validated, contiguous CPU tensors (shapes as in paged_attention.h).
struct PagedCpuArgs {
  int64_t B, H, Hkv, block_size, d, max_blocks;
  const float* q;          // [B, H, d] float32
  const void* k;           // [num_blocks, Hkv, block_size, d], float or BFloat16
  const void* v;
  bool bf16;               // storage type of k and v
  const int32_t* tables;   // [B, max_blocks]
  const int64_t* lengths;  // [B]
  float scale;
  float* out;              // [B, H, d] float32
};

// Defined in paged_attention_avx2.cpp (x86-64 builds only); call only where the CPU has AVX2 and FMA.
void PagedAttentionCpuAvx2(const PagedCpuArgs& args);

namespace {

// Per-thread scratch. Not std::vector: its out-of-line members are weak symbols that the linker
// could take from the AVX2 copy for the baseline one; this type has internal linkage.
struct Scratch {
  explicit Scratch(int64_t n) : p(new float[static_cast<size_t>(n)]) {}
  ~Scratch() { delete[] p; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float& operator[](int64_t i) { return p[i]; }
  float* data() { return p; }
  float* p;
};

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
// Both storage types are consumed 2 * kW elements at a time: one Vectorized<BFloat16> widens to
// two Vectorized<float>.
constexpr int64_t kStep = 2 * kW;
static_assert(at::vec::Vectorized<c10::BFloat16>::size() == kStep);

template <typename T>
inline void Load2(const T* p, Vec& a, Vec& b);

template <>
inline void Load2<float>(const float* p, Vec& a, Vec& b) {
  a = Vec::loadu(p);
  b = Vec::loadu(p + kW);
}

template <>
inline void Load2<c10::BFloat16>(const c10::BFloat16* p, Vec& a, Vec& b) {
  std::tie(a, b) = at::vec::convert_to_float<c10::BFloat16>(at::vec::Vectorized<c10::BFloat16>::loadu(p));
}

// sum_i q[i] * k[i], q in float32.
template <typename T>
inline float Dot(const float* q, const T* k, int64_t d) {
  Vec acc0(0.0f), acc1(0.0f);
  int64_t i = 0;
  for (; i + kStep <= d; i += kStep) {
    Vec a, b;
    Load2(k + i, a, b);
    acc0 = at::vec::fmadd(a, Vec::loadu(q + i), acc0);
    acc1 = at::vec::fmadd(b, Vec::loadu(q + i + kW), acc1);
  }
  float lanes[kW];
  (acc0 + acc1).store(lanes);
  float sum = 0.0f;
  for (int64_t j = 0; j < kW; ++j) sum += lanes[j];
  for (; i < d; ++i) sum += q[i] * static_cast<float>(k[i]);
  return sum;
}

// acc[i] += p * v[i]
template <typename T>
inline void AddScaled(float* acc, float p, const T* v, int64_t d) {
  const Vec pv(p);
  int64_t i = 0;
  for (; i + kStep <= d; i += kStep) {
    Vec a, b;
    Load2(v + i, a, b);
    at::vec::fmadd(a, pv, Vec::loadu(acc + i)).store(acc + i);
    at::vec::fmadd(b, pv, Vec::loadu(acc + i + kW)).store(acc + i + kW);
  }
  for (; i < d; ++i) acc[i] += p * static_cast<float>(v[i]);
}

inline void ScaleRow(float* x, float c, int64_t d) {
  const Vec cv(c);
  int64_t i = 0;
  for (; i + kW <= d; i += kW) (Vec::loadu(x + i) * cv).store(x + i);
  for (; i < d; ++i) x[i] *= c;
}

// One task per (sequence b, query head h). Online softmax over blocks: the scores of a block are
// computed first, then the running max moves once per block and the accumulator is rescaled
// once, so exp() runs once per token plus once per block.
template <typename T>
void CpuKernel(const PagedCpuArgs& s, const T* k, const T* v) {
  const float* q = s.q;
  const int32_t* tables = s.tables;
  const int64_t* lengths = s.lengths;
  const float scale = s.scale;
  float* out = s.out;
  const int64_t G = s.H / s.Hkv;
  const int64_t bs = s.block_size, d = s.d;
  asl::ParallelFor(at::get_num_threads(), 0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    Scratch scores(bs), acc(d);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / s.H, h = bh % s.H, kvh = h / G;
      float* o = out + bh * d;
      const int64_t len = lengths[b];
      if (len <= 0) {
        std::fill(o, o + d, 0.0f);
        continue;
      }
      const float* qr = q + bh * d;
      std::fill(acc.data(), acc.data() + d, 0.0f);
      float m = -std::numeric_limits<float>::infinity();
      float l = 0.0f;
      const int64_t nb = (len + bs - 1) / bs;
      for (int64_t j = 0; j < nb; ++j) {
        const int64_t blk = tables[b * s.max_blocks + j];
        const int64_t n = std::min(bs, len - j * bs);
        const int64_t base = (blk * s.Hkv + kvh) * bs * d;
        const T* kb = k + base;
        const T* vb = v + base;
        float block_max = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < n; ++t) {
          scores[t] = Dot(qr, kb + t * d, d) * scale;
          block_max = std::max(block_max, scores[t]);
        }
        if (block_max > m) {
          const float c = std::exp(m - block_max);  // 0 on the first block, where acc and l are 0
          l *= c;
          ScaleRow(acc.data(), c, d);
          m = block_max;
        }
        for (int64_t t = 0; t < n; ++t) {
          const float p = std::exp(scores[t] - m);
          l += p;
          AddScaled(acc.data(), p, vb + t * d, d);
        }
      }
      const float inv = 1.0f / l;
      for (int64_t i = 0; i < d; ++i) o[i] = acc[i] * inv;
    }
  });
}

inline void RunPagedAttentionCpu(const PagedCpuArgs& a) {
  if (a.bf16) {
    CpuKernel(a, static_cast<const c10::BFloat16*>(a.k), static_cast<const c10::BFloat16*>(a.v));
  } else {
    CpuKernel(a, static_cast<const float*>(a.k), static_cast<const float*>(a.v));
  }
}

}  // namespace
}  // namespace asl::kv

// Internal to engine/kv: the CPU paged decode attention kernel (see paged_attention.h for the
// contract). This header is compiled once per instruction set: by paged_attention.cpp with the
// build's default flags, by paged_attention_avx2.cpp (-mavx2 -mfma -mf16c) and by
// paged_attention_avx512.cpp (AVX-512 F/BW/VL/DQ); paged_attention.cpp picks one at run time
// (engine/common/cpu_isa.h). Everything here has internal linkage (anonymous namespace) and
// at::vec's types live in a per-capability inline namespace, so the copies never merge at link time.
//
// The work is cut so that every byte of K and V is read once per step and the arithmetic of an
// output element never depends on the batch or the thread count:
// - one task per (partition, KV head): a partition is up to `part_blocks` consecutive blocks of one
//   sequence (a fixed number of tokens, paged_attention.cpp), and the task computes the G query
//   heads that share the KV head together, so a GQA group reads its K/V rows once (from memory for
//   the first head, from L1 for the others) instead of G times;
// - within a task, online softmax per block (a block's scores first, then one rescale), exp() over
//   a block's scores at vector width;
// - then one combine per (sequence, query head) over its partitions, in partition order
//   (flash-decoding): out = sum_p acc_p * exp(m_p - M) / sum_p l_p * exp(m_p - M).
// Partitions depend only on a sequence's length, so a long sequence is spread over the threads
// even when it decodes alone, and its result is the same whatever its batch-mates are.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "engine/common/parallel.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <tuple>

namespace asl::kv {

// Storage types of K and V the CPU kernel reads.
enum class KvStorage : uint8_t { kFloat, kBFloat16, kHalf };

// Raw views of validated, contiguous CPU tensors (shapes as in paged_attention.h), and the plan.
struct PagedCpuArgs {
  int64_t B, H, Hkv, block_size, d, max_blocks;
  const float* q;          // [B, H, d] float32
  const void* k;           // [num_blocks, Hkv, block_size, d] of `storage`
  const void* v;
  KvStorage storage;
  const int32_t* tables;   // [B, max_blocks]
  const int64_t* lengths;  // [B]
  float scale;
  float* out;              // [B, H, d] float32
  int threads;             // asl::ParallelFor threads
  // The plan: sequence b owns partitions seq_parts[b] .. seq_parts[b + 1] - 1 (none when its length
  // is 0); partition p belongs to sequence part_seq[p] and covers blocks
  // (p - seq_parts[b]) * part_blocks onwards, at most part_blocks of them.
  int64_t part_blocks;
  int64_t num_parts;
  const int64_t* seq_parts;  // [B + 1]
  const int64_t* part_seq;   // [num_parts]
  float* partials;           // scratch [num_parts, Hkv, G, d + 2]: per query head acc[d], m, l
};

// Defined in paged_attention_avx2.cpp / paged_attention_avx512.cpp (x86-64 builds only); call only
// where the CPU has the instruction set (paged_attention.cpp checks).
void PagedAttentionCpuAvx2(const PagedCpuArgs& args);
void PagedAttentionCpuAvx512(const PagedCpuArgs& args);

namespace {

// Per-thread scratch. Not std::vector: its out-of-line members are weak symbols that the linker
// could take from an AVX copy for the baseline one; this type has internal linkage.
struct Scratch {
  explicit Scratch(int64_t n) : p(new float[static_cast<size_t>(n)]) {}
  ~Scratch() { delete[] p; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* data() { return p; }
  float* p;
};

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
// Every storage type is consumed 2 * kW elements at a time: one Vectorized<BFloat16 or Half>
// widens to two Vectorized<float>.
constexpr int64_t kStep = 2 * kW;
static_assert(at::vec::Vectorized<c10::BFloat16>::size() == kStep);
static_assert(at::vec::Vectorized<c10::Half>::size() == kStep);

template <typename T>
inline void Load2(const T* p, Vec& a, Vec& b) {
  std::tie(a, b) = at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p));
}

template <>
inline void Load2<float>(const float* p, Vec& a, Vec& b) {
  a = Vec::loadu(p);
  b = Vec::loadu(p + kW);
}

inline float HSum(const Vec& v) { return at::vec::vec_reduce_all<float>(std::plus<Vec>(), v); }

// sum_i q[i] * k[i], q in float32: two accumulators over steps of kStep, added, reduced across
// lanes, then the scalar tail.
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
  float sum = HSum(acc0 + acc1);
  for (; i < d; ++i) sum += q[i] * static_cast<float>(k[i]);
  return sum;
}

inline void ScaleRow(float* x, float c, int64_t d) {
  const Vec cv(c);
  int64_t i = 0;
  for (; i + kW <= d; i += kW) (Vec::loadu(x + i) * cv).store(x + i);
  for (; i < d; ++i) x[i] *= c;
}

// p[t] = exp(s[t] - m) in place for t < n; returns their sum, in t order.
inline float ExpShifted(float* s, int64_t n, float m) {
  const Vec mv(m);
  int64_t t = 0;
  for (; t + kW <= n; t += kW) (Vec::loadu(s + t) - mv).exp_u20().store(s + t);
  if (t < n) (Vec::loadu(s + t, static_cast<int>(n - t)) - mv).exp_u20().store(s + t, static_cast<int>(n - t));
  float sum = 0.0f;
  for (t = 0; t < n; ++t) sum += s[t];
  return sum;
}

// acc[i] += sum_t p[t] * v[t][i] over the n rows of a block (rows d apart), the accumulator held
// in registers across the rows.
template <typename T>
inline void AddBlock(float* acc, const float* p, const T* v, int64_t n, int64_t d) {
  int64_t i = 0;
  for (; i + kStep <= d; i += kStep) {
    Vec a0 = Vec::loadu(acc + i), a1 = Vec::loadu(acc + i + kW);
    for (int64_t t = 0; t < n; ++t) {
      Vec x, y;
      Load2(v + t * d + i, x, y);
      const Vec pt(p[t]);
      a0 = at::vec::fmadd(x, pt, a0);
      a1 = at::vec::fmadd(y, pt, a1);
    }
    a0.store(acc + i);
    a1.store(acc + i + kW);
  }
  for (; i < d; ++i) {
    float a = acc[i];
    for (int64_t t = 0; t < n; ++t) a += p[t] * static_cast<float>(v[t * d + i]);
    acc[i] = a;
  }
}

// Blocks sit anywhere in the pool, so the hardware prefetchers, which follow streams within a page,
// restart at every block: a task asks for the K and V rows of the blocks kPrefetchBlocks ahead
// while it computes the current one (measured: bench/results/attention.md).
constexpr int64_t kPrefetchBlocks = 2;
constexpr int64_t kCacheLine = 64;

inline void PrefetchBytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += kCacheLine) __builtin_prefetch(c + off, 0, 3);
}

// Task (partition p, KV head kvh): the partial softmax state of the G query heads of the group.
template <typename T>
void PartitionTask(const PagedCpuArgs& s, const T* k, const T* v, int64_t p, int64_t kvh, float* scores) {
  const int64_t G = s.H / s.Hkv, bs = s.block_size, d = s.d;
  const int64_t b = s.part_seq[p];
  const int64_t len = s.lengths[b];
  const int64_t nb = (len + bs - 1) / bs;
  const int64_t j0 = (p - s.seq_parts[b]) * s.part_blocks;
  const int64_t j1 = std::min(nb, j0 + s.part_blocks);
  const float* qg = s.q + (b * s.H + kvh * G) * d;
  float* part = s.partials + (p * s.Hkv + kvh) * G * (d + 2);
  for (int64_t g = 0; g < G; ++g) {
    float* st = part + g * (d + 2);
    std::fill(st, st + d, 0.0f);
    st[d] = -std::numeric_limits<float>::infinity();  // m
    st[d + 1] = 0.0f;                                  // l
  }
  auto rows_of = [&](int64_t j) { return (static_cast<int64_t>(s.tables[b * s.max_blocks + j]) * s.Hkv + kvh) * bs * d; };
  auto prefetch = [&](int64_t j) {
    if (j >= j1) return;
    const int64_t bytes = std::min(bs, len - j * bs) * d * static_cast<int64_t>(sizeof(T));
    PrefetchBytes(k + rows_of(j), bytes);
    PrefetchBytes(v + rows_of(j), bytes);
  };
  for (int64_t j = j0; j < std::min(j1, j0 + kPrefetchBlocks); ++j) prefetch(j);
  for (int64_t j = j0; j < j1; ++j) {
    prefetch(j + kPrefetchBlocks);
    const int64_t n = std::min(bs, len - j * bs);
    const int64_t base = rows_of(j);
    const T* kb = k + base;
    const T* vb = v + base;
    for (int64_t g = 0; g < G; ++g) {
      float* sg = scores + g * bs;
      const float* qr = qg + g * d;
      float block_max = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        sg[t] = Dot(qr, kb + t * d, d) * s.scale;
        block_max = std::max(block_max, sg[t]);
      }
      float* st = part + g * (d + 2);
      float& m = st[d];
      float& l = st[d + 1];
      if (block_max > m) {
        const float c = std::exp(m - block_max);  // 0 on the first block, where acc and l are 0
        l *= c;
        ScaleRow(st, c, d);
        m = block_max;
      }
      l += ExpShifted(sg, n, m);
      AddBlock(st, sg, vb, n, d);
    }
  }
}

// Output row (b, query head h) from its partitions, in partition order.
inline void Combine(const PagedCpuArgs& s, int64_t b, int64_t h) {
  const int64_t G = s.H / s.Hkv, d = s.d, kvh = h / G, g = h % G;
  float* o = s.out + (b * s.H + h) * d;
  std::fill(o, o + d, 0.0f);
  const int64_t p0 = s.seq_parts[b], p1 = s.seq_parts[b + 1];
  if (p0 == p1) return;  // length 0: a zero row
  auto state = [&](int64_t p) { return s.partials + ((p * s.Hkv + kvh) * G + g) * (d + 2); };
  float M = -std::numeric_limits<float>::infinity();
  for (int64_t p = p0; p < p1; ++p) M = std::max(M, state(p)[d]);
  float L = 0.0f;
  for (int64_t p = p0; p < p1; ++p) {
    const float* st = state(p);
    const float c = std::exp(st[d] - M);  // exactly 1 for a single partition
    L += st[d + 1] * c;
    const Vec cv(c);
    int64_t i = 0;
    for (; i + kW <= d; i += kW) at::vec::fmadd(Vec::loadu(st + i), cv, Vec::loadu(o + i)).store(o + i);
    for (; i < d; ++i) o[i] += st[i] * c;
  }
  ScaleRow(o, 1.0f / L, d);
}

template <typename T>
void CpuKernel(const PagedCpuArgs& s, const T* k, const T* v) {
  const int64_t G = s.H / s.Hkv;
  asl::ParallelFor(s.threads, 0, s.num_parts * s.Hkv, 1, [&](int64_t begin, int64_t end) {
    Scratch scores(G * s.block_size);
    for (int64_t task = begin; task < end; ++task) {
      PartitionTask(s, k, v, task / s.Hkv, task % s.Hkv, scores.data());
    }
  });
  asl::ParallelFor(s.threads, 0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) Combine(s, bh / s.H, bh % s.H);
  });
}

inline void RunPagedAttentionCpu(const PagedCpuArgs& a) {
  switch (a.storage) {
    case KvStorage::kFloat:
      CpuKernel(a, static_cast<const float*>(a.k), static_cast<const float*>(a.v));
      break;
    case KvStorage::kBFloat16:
      CpuKernel(a, static_cast<const c10::BFloat16*>(a.k), static_cast<const c10::BFloat16*>(a.v));
      break;
    case KvStorage::kHalf:
      CpuKernel(a, static_cast<const c10::Half*>(a.k), static_cast<const c10::Half*>(a.v));
      break;
  }
}

}  // namespace
}  // namespace asl::kv

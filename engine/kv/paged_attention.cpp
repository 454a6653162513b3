#include "engine/kv/paged_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <limits>
#include <optional>

#include "engine/common/cpu_isa.h"
#include "engine/kv/paged_attention_kernel.h"

namespace asl::kv {
namespace {

struct Shape {
  int64_t B, H, Hkv, block_size, d, max_blocks;
};

// Tokens of a partition, the unit of the CPU kernel's work (paged_attention_kernel.h): small
// enough that one long sequence spreads over every thread, large enough that a partition's fixed
// costs (its state, its share of the combine) stay small beside its 256 rows of K and V.
constexpr int64_t kPartitionTokens = 256;

// The highest-ISA copy of the kernel the build has and the CPU runs.
void RunCpuKernel(const PagedCpuArgs& args) {
  const CpuIsa isa = ActiveCpuIsa();
#if defined(ASL_KV_HAVE_AVX512)
  if (isa >= CpuIsa::kAvx512) return PagedAttentionCpuAvx512(args);
#endif
#if defined(ASL_KV_HAVE_AVX2)
  if (isa >= CpuIsa::kAvx2) return PagedAttentionCpuAvx2(args);
#endif
  (void)isa;
  RunPagedAttentionCpu(args);
}

// The storage types the CPU kernel reads; anything else takes the gather path.
std::optional<KvStorage> CpuStorageOf(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return KvStorage::kFloat;
    case at::kBFloat16: return KvStorage::kBFloat16;
    case at::kHalf: return KvStorage::kHalf;
    default: return std::nullopt;
  }
}

Shape CheckShapes(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const at::Tensor& block_tables, const at::Tensor& lengths) {
  TORCH_CHECK(q.dim() == 3, "paged attention: q must be [B, H, d], got ", q.sizes());
  TORCH_CHECK(k_cache.dim() == 4, "paged attention: k_cache must be [num_blocks, Hkv, block_size, d], got ",
              k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes() && v_cache.scalar_type() == k_cache.scalar_type(),
              "paged attention: v_cache must match k_cache");
  Shape s{q.size(0), q.size(1), k_cache.size(1), k_cache.size(2), q.size(2), block_tables.dim() == 2 ? block_tables.size(1) : 0};
  TORCH_CHECK(k_cache.size(3) == s.d, "paged attention: head dim of q (", s.d, ") and cache (", k_cache.size(3), ") differ");
  TORCH_CHECK(s.Hkv > 0 && s.H % s.Hkv == 0, "paged attention: H (", s.H, ") not a multiple of Hkv (", s.Hkv, ")");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == s.B && block_tables.scalar_type() == at::kInt &&
                  block_tables.is_cpu(),
              "paged attention: block_tables must be [B, max_blocks] int32 on CPU");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == s.B && lengths.scalar_type() == at::kLong && lengths.is_cpu(),
              "paged attention: lengths must be [B] int64 on CPU");
  // Block ids are checked here, before any thread dereferences them.
  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor lens = lengths.contiguous();
  const int32_t* t = tables.data_ptr<int32_t>();
  const int64_t* len = lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < s.B; ++b) {
    TORCH_CHECK(len[b] >= 0 && len[b] <= s.max_blocks * s.block_size, "paged attention: length ", len[b],
                " of sequence ", b, " does not fit its block table");
    for (int64_t j = 0; j < (len[b] + s.block_size - 1) / s.block_size; ++j) {
      const int32_t blk = t[b * s.max_blocks + j];
      TORCH_CHECK(blk >= 0 && blk < k_cache.size(0), "paged attention: block id ", blk, " out of range");
    }
  }
  return s;
}

}  // namespace

at::Tensor PagedDecodeAttention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& block_tables, const at::Tensor& lengths, double scale) {
  const at::ScalarType st = k_cache.scalar_type();
  const std::optional<KvStorage> storage = CpuStorageOf(st);
  if (!k_cache.is_cpu() || !storage) {
    return PagedDecodeAttentionGather(q, k_cache, v_cache, block_tables, lengths, scale);
  }
  const Shape s = CheckShapes(q, k_cache, v_cache, block_tables, lengths);
  TORCH_CHECK(q.is_cpu(), "paged attention: q must be on the cache's device (cpu)");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged attention: cache must be contiguous");
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor lens = lengths.contiguous();
  at::Tensor out = at::empty({s.B, s.H, s.d}, at::kFloat);

  // The plan: each sequence's blocks in partitions of part_blocks (paged_attention_kernel.h).
  const int64_t part_blocks = std::max<int64_t>(1, kPartitionTokens / s.block_size);
  at::Tensor seq_parts = at::empty({s.B + 1}, at::kLong);
  int64_t* sp = seq_parts.data_ptr<int64_t>();
  const int64_t* len = lens.data_ptr<int64_t>();
  sp[0] = 0;
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t nb = (len[b] + s.block_size - 1) / s.block_size;
    sp[b + 1] = sp[b] + (nb + part_blocks - 1) / part_blocks;
  }
  const int64_t num_parts = sp[s.B];
  at::Tensor part_seq = at::empty({std::max<int64_t>(1, num_parts)}, at::kLong);
  int64_t* ps = part_seq.data_ptr<int64_t>();
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t p = sp[b]; p < sp[b + 1]; ++p) ps[p] = b;
  }
  at::Tensor partials = at::empty({std::max<int64_t>(1, num_parts * s.H * (s.d + 2))}, at::kFloat);

  const PagedCpuArgs args{s.B, s.H, s.Hkv, s.block_size, s.d, s.max_blocks, qf.data_ptr<float>(),
                          k_cache.data_ptr(), v_cache.data_ptr(), *storage, tables.data_ptr<int32_t>(),
                          len, static_cast<float>(scale), out.data_ptr<float>(), at::get_num_threads(),
                          part_blocks, num_parts, sp, ps, partials.data_ptr<float>()};
  RunCpuKernel(args);
  return out.to(q.scalar_type());
}

at::Tensor PagedDecodeAttentionGather(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                      const at::Tensor& block_tables, const at::Tensor& lengths, double scale) {
  const Shape s = CheckShapes(q, k_cache, v_cache, block_tables, lengths);
  const at::Device device = k_cache.device();
  if (s.B == 0 || s.max_blocks == 0) return at::zeros_like(q);
  const int64_t G = s.H / s.Hkv;
  const int64_t T = s.max_blocks * s.block_size;
  // Entries past a sequence's blocks are unspecified: clamp them to a valid id (they are masked).
  const at::Tensor ids = block_tables.to(at::kLong).clamp(0, k_cache.size(0) - 1).reshape({-1}).to(device);
  // [B * max_blocks, Hkv, bs, d] -> [B, Hkv, max_blocks * bs, d], float32.
  auto gather = [&](const at::Tensor& cache) {
    return cache.index_select(0, ids)
        .view({s.B, s.max_blocks, s.Hkv, s.block_size, s.d})
        .permute({0, 2, 1, 3, 4})
        .reshape({s.B, s.Hkv, T, s.d})
        .to(at::kFloat);
  };
  const at::Tensor k = gather(k_cache);
  at::Tensor v = gather(v_cache);
  const at::Tensor qf = q.to(device, at::kFloat).reshape({s.B, s.Hkv, G, s.d});
  at::Tensor scores = at::matmul(qf, k.transpose(-1, -2)) * scale;  // [B, Hkv, G, T]
  const at::Tensor pos = at::arange(T, at::TensorOptions().dtype(at::kLong).device(device));
  const at::Tensor pad = pos.view({1, 1, 1, T}) >= lengths.to(device).view({s.B, 1, 1, 1});
  scores.masked_fill_(pad, -std::numeric_limits<float>::infinity());
  // A length-0 row is all padding: softmax gives NaN there, and the fill turns it into zeros.
  const at::Tensor p = at::softmax(scores, -1).masked_fill(pad, 0.0);
  // Padded slots hold whatever the pool's memory held (never-written tails of blocks, clamped ids),
  // which may be NaN or Inf: a zero weight does not cancel those in the matmul, so zero them (in
  // place: index_select made v a copy of its own).
  v.masked_fill_(pad.view({s.B, 1, T, 1}), 0.0);
  return at::matmul(p, v).reshape({s.B, s.H, s.d}).to(q.scalar_type());
}

}  // namespace asl::kv

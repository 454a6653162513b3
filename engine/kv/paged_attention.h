// Paged decode attention: one query token per sequence attends over that sequence's KV blocks
// for one layer, read in place from the pool (no contiguous copy of K/V on CPU).
//
// Thread: called on the engine thread; the CPU kernel fans out over at::get_num_threads() threads
// (asl::ParallelFor over (partition, KV head), then over (sequence, query head)) and returns when
// all are done. Pure function:
// it reads its inputs and allocates only the result.
#pragma once

#include <ATen/core/Tensor.h>

namespace asl::kv {

// q            [B, H, d], any floating dtype (already rotated)
// k_cache,     [num_blocks, Hkv, block_size, d], float32, bfloat16 or float16, contiguous; H % Hkv == 0 and
//   v_cache    query head h reads KV head h / (H / Hkv) (GQA)
// block_tables [B, max_blocks] int32 on CPU: row b lists sequence b's blocks in token order; entries
//              past ceil(lengths[b] / block_size) are ignored
// lengths      [B] int64 on CPU: tokens of sequence b (0 gives a zero output row)
// Returns softmax(q K^T * scale) V as [B, H, d] in q's dtype and device; the softmax and the
// accumulation run in float32 (online softmax, one rescale per block).
// CPU storage runs the at::vec kernel (paged_attention_kernel.h: 256-token partitions x KV heads,
// built for baseline, AVX2 and AVX-512, chosen at run time by engine/common/cpu_isa.h); any other
// device or storage dtype gathers the blocks and uses ATen matmul/softmax
// (PagedDecodeAttentionGather). Bad shapes, dtypes or block ids throw c10::Error before any work.
at::Tensor PagedDecodeAttention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& block_tables, const at::Tensor& lengths, double scale);

// The device-agnostic path: gathers each sequence's blocks (padded to max_blocks), then batched
// float32 matmul, masked softmax, matmul. Used for CUDA storage; exposed so CPU tests cover it.
at::Tensor PagedDecodeAttentionGather(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                      const at::Tensor& block_tables, const at::Tensor& lengths, double scale);

}  // namespace asl::kv

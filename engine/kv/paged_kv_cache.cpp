// PagedKvCache (declared in block_pool.h): the KvCache seam over a BlockPool.
#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

#include "engine/kv/block_pool.h"
#include "engine/kv/paged_attention.h"

namespace asl::kv {
namespace {

std::string ShapeString(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// k and v: 3-d, floating point, the same shape, Hkv at head_axis and d last.
Status CheckKv(const BlockPool& pool, const at::Tensor& k, const at::Tensor& v, int64_t head_axis, const char* what) {
  const bool ok = k.defined() && v.defined() && k.dim() == 3 && k.size(head_axis) == pool.num_kv_heads() &&
                  k.size(2) == pool.head_dim() && v.sizes() == k.sizes() && k.is_floating_point() &&
                  v.is_floating_point();
  if (ok) return Status::Ok();
  return InvalidArgument(std::string("kv cache: ") + what + " k and v must be floating point " +
                         (head_axis == 0 ? "[Hkv=" : "[B, Hkv=") + std::to_string(pool.num_kv_heads()) +
                         (head_axis == 0 ? ", n, d=" : ", d=") + std::to_string(pool.head_dim()) + "], got k " +
                         ShapeString(k) + " and v " + ShapeString(v));
}

}  // namespace

void PagedKvCache::Write(int layer, const std::vector<SeqId>& seqs, const std::vector<int64_t>& old_lengths,
                         const at::Tensor& k_rows, const at::Tensor& v_rows) {
  const int64_t num_rows = k_rows.size(0);
  const int64_t per_seq = num_rows / static_cast<int64_t>(seqs.size());
  const int64_t bs = pool_->block_size();
  at::Tensor block_ids = at::empty({num_rows}, at::kLong);
  at::Tensor offsets = at::empty({num_rows}, at::kLong);
  int64_t* blk = block_ids.data_ptr<int64_t>();
  int64_t* off = offsets.data_ptr<int64_t>();
  for (size_t i = 0; i < seqs.size(); ++i) {
    const std::vector<BlockId>& table = pool_->block_table(seqs[i], layer);
    for (int64_t t = 0; t < per_seq; ++t) {
      const int64_t pos = old_lengths[i] + t;
      blk[static_cast<int64_t>(i) * per_seq + t] = table[static_cast<size_t>(pos / bs)];
      off[static_cast<int64_t>(i) * per_seq + t] = pos % bs;
    }
  }
  block_ids = block_ids.to(pool_->device());
  offsets = offsets.to(pool_->device());
  using at::indexing::Slice;
  using at::indexing::TensorIndex;
  // cache[block_ids, :, offsets] is [num_rows, Hkv, d] (advanced indices split by a slice go first).
  // The handles share the pool's storage; index_put_ writes in place.
  at::Tensor k_cache = pool_->k_cache(), v_cache = pool_->v_cache();
  k_cache.index_put_({TensorIndex(block_ids), Slice(), TensorIndex(offsets)}, k_rows);
  v_cache.index_put_({TensorIndex(block_ids), Slice(), TensorIndex(offsets)}, v_rows);
}

Status PagedKvCache::Append(SeqId seq, int layer, const at::Tensor& k, const at::Tensor& v) {
  if (!pool_->HasSequence(seq)) return NotFound("kv cache: unknown sequence " + std::to_string(seq));
  if (layer < 0 || layer >= pool_->num_layers()) return InvalidArgument("kv cache: layer " + std::to_string(layer) + " out of range");
  ASL_RETURN_IF_ERROR(CheckKv(*pool_, k, v, /*head_axis=*/0, "Append:"));
  const int64_t n = k.size(1);
  if (n == 0) return Status::Ok();
  at::Tensor k_rows, v_rows;  // [n, Hkv, d] in the pool's dtype and device
  try {
    k_rows = k.to(pool_->device(), pool_->dtype()).transpose(0, 1);
    v_rows = v.to(pool_->device(), pool_->dtype()).transpose(0, 1);
  } catch (const c10::Error& e) {
    return InvalidArgument(std::string("kv cache: Append: cannot convert k/v: ") + e.what_without_backtrace());
  }
  const int64_t old_length = pool_->Length(seq, layer);
  ASL_RETURN_IF_ERROR(pool_->Grow(layer, {seq}, n));
  try {
    Write(layer, {seq}, {old_length}, k_rows, v_rows);
  } catch (const c10::Error& e) {
    Status undo = pool_->Truncate(seq, layer, old_length);
    ASL_CHECK(undo.ok(), undo.ToString());
    return Internal(std::string("kv cache: Append: write failed: ") + e.what_without_backtrace());
  }
  return Status::Ok();
}

Status PagedKvCache::AppendDecode(int layer, const std::vector<SeqId>& seqs, const at::Tensor& k,
                                  const at::Tensor& v) {
  ASL_RETURN_IF_ERROR(CheckKv(*pool_, k, v, /*head_axis=*/1, "AppendDecode:"));
  if (k.size(0) != static_cast<int64_t>(seqs.size())) {
    return InvalidArgument("kv cache: AppendDecode: " + std::to_string(seqs.size()) + " sequences but k has " +
                           std::to_string(k.size(0)) + " rows");
  }
  if (seqs.empty()) return Status::Ok();
  at::Tensor k_rows, v_rows;  // [B, Hkv, d]
  try {
    k_rows = k.to(pool_->device(), pool_->dtype());
    v_rows = v.to(pool_->device(), pool_->dtype());
  } catch (const c10::Error& e) {
    return InvalidArgument(std::string("kv cache: AppendDecode: cannot convert k/v: ") + e.what_without_backtrace());
  }
  std::vector<int64_t> old_lengths;
  old_lengths.reserve(seqs.size());
  for (SeqId seq : seqs) old_lengths.push_back(pool_->Length(seq, layer));
  ASL_RETURN_IF_ERROR(pool_->Grow(layer, seqs, 1));  // validates ids, layer, duplicates; all-or-nothing
  try {
    Write(layer, seqs, old_lengths, k_rows, v_rows);
  } catch (const c10::Error& e) {
    for (size_t i = seqs.size(); i-- > 0;) {
      Status undo = pool_->Truncate(seqs[i], layer, old_lengths[i]);
      ASL_CHECK(undo.ok(), undo.ToString());
    }
    return Internal(std::string("kv cache: AppendDecode: write failed: ") + e.what_without_backtrace());
  }
  return Status::Ok();
}

std::pair<at::Tensor, at::Tensor> PagedKvCache::PrefixKv(SeqId seq, int layer) const {
  const int64_t tokens = pool_->PinnedTokens(seq);
  TORCH_CHECK(tokens > 0, "kv cache: sequence ", seq, " has no cached prefix");
  return pool_->GatherBlocks(pool_->pinned_blocks(seq, layer), tokens);
}

at::Tensor PagedKvCache::Attend(int layer, const std::vector<SeqId>& seqs, const at::Tensor& q, double scale) const {
  const int64_t B = static_cast<int64_t>(seqs.size());
  TORCH_CHECK(q.dim() == 3 && q.size(0) == B, "kv cache: Attend: q must be [B=", B, ", H, d], got ", q.sizes());
  TORCH_CHECK(layer >= 0 && layer < pool_->num_layers(), "kv cache: Attend: layer ", layer, " out of range");
  size_t max_blocks = 0;
  for (SeqId seq : seqs) {
    TORCH_CHECK(pool_->HasSequence(seq), "kv cache: Attend: unknown sequence ", seq);
    max_blocks = std::max(max_blocks, pool_->block_table(seq, layer).size());
  }
  at::Tensor tables = at::zeros({B, static_cast<int64_t>(max_blocks)}, at::kInt);  // padding: block 0, masked
  at::Tensor lengths = at::empty({B}, at::kLong);
  int32_t* t = tables.data_ptr<int32_t>();
  int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<BlockId>& table = pool_->block_table(seqs[static_cast<size_t>(b)], layer);
    std::copy(table.begin(), table.end(), t + b * static_cast<int64_t>(max_blocks));
    len[b] = pool_->Length(seqs[static_cast<size_t>(b)], layer);
  }
  return PagedDecodeAttention(q.to(pool_->device()), pool_->k_cache(), pool_->v_cache(), tables, lengths, scale);
}

}  // namespace asl::kv

// The paged KV pool (docs/architecture.md, "KV"): K and V storage preallocated once, block ids from
// a free list, one block table and length per (sequence, layer); and PagedKvCache, the KvCache
// that writes kept tokens densely into it and runs paged decode attention over it.
//
// Thread: every method is called on the engine thread (no locking inside). The storage tensors
// are read by libtorch's intra-op threads during Attend, which the engine thread waits for.
// Ownership: the pool owns the storage and all bookkeeping; PagedKvCache borrows the pool, which
// must outlive it. Failure: every mutating call asks first and is all-or-nothing; a call that
// returns an error has changed nothing (same tables, lengths, free-list order and accounting).
//
// Free list: LIFO (a stack). Fresh pools hand out 0, 1, 2, ... in order; FreeSequence pushes a
// sequence's blocks in reverse (last layer first, each table back to front), so the next
// allocation gets them back in their original order, and a Truncate that undoes a Grow restores
// the free list exactly. LIFO reuses the most recently touched memory first (warm in cache).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/common/status.h"
#include "engine/kv/kv_cache.h"

namespace asl::kv {

using BlockId = int32_t;

struct BlockPoolOptions {
  int num_layers = 0;
  int64_t num_kv_heads = 0;           // Hkv
  int64_t head_dim = 0;               // d
  at::ScalarType dtype = at::kFloat;  // float32, bfloat16 or float16 storage
  at::Device device = at::kCPU;
  int block_size = 16;                // tokens per block
  int64_t num_blocks = 0;             // > 0: exactly this many blocks
  int64_t bytes = 0;                  // used when num_blocks == 0: num_blocks = bytes / bytes_per_block
};

class BlockPool {
 public:
  // Validates the options and allocates the storage. InvalidArgument names the bad field;
  // ResourceExhausted when the budget holds no block or the allocation fails.
  static StatusOr<std::unique_ptr<BlockPool>> Create(const BlockPoolOptions& options);

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Bytes of one block: K and V, all KV heads, block_size tokens.
  static int64_t BytesPerBlock(int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype, int block_size);

  // Sequences. AddSequence fails (InvalidArgument) if the id exists and changes nothing.
  // FreeSequence returns every block of the sequence to the free list; unknown ids are ignored.
  Status AddSequence(SeqId seq);
  void FreeSequence(SeqId seq);
  bool HasSequence(SeqId seq) const { return seqs_.count(seq) != 0; }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }

  // Tokens stored for (seq, layer); 0 for an unknown sequence.
  int64_t Length(SeqId seq, int layer) const;
  // The blocks of (seq, layer), in token order: token t lives in block_table[t / block_size] at
  // offset t % block_size. Checks (ASL_CHECK) that the sequence and layer exist.
  const std::vector<BlockId>& block_table(SeqId seq, int layer) const;

  // Ask, then mutate.
  int64_t BlocksForTokens(int64_t num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }
  bool CanAllocate(int64_t num_blocks) const { return num_blocks >= 0 && num_blocks <= num_blocks_free(); }
  // Blocks that growing (seq, layer) by num_new_tokens would take from the free list.
  int64_t BlocksToGrow(SeqId seq, int layer, int64_t num_new_tokens) const;
  // Grows (seqs[i], layer) by num_new_tokens each, allocating blocks in seqs order (each table in
  // token order). Errors, with nothing changed: NotFound (unknown sequence), InvalidArgument (bad
  // layer, negative count, a sequence listed twice), ResourceExhausted (not enough free blocks).
  Status Grow(int layer, const std::vector<SeqId>& seqs, int64_t num_new_tokens);
  // Shortens (seq, layer) to new_length (<= Length), returning the blocks no longer needed,
  // back to front. Truncating every sequence of a Grow, in reverse order, undoes it exactly.
  Status Truncate(SeqId seq, int layer, int64_t new_length);

  // Copies (seq, layer) out of the pool: K and V [Hkv, len, d] in the storage dtype, on the
  // pool's device. For tests and debugging; decode attention never does this.
  std::pair<at::Tensor, at::Tensor> Gather(SeqId seq, int layer) const;

  // Verifies the bookkeeping: every block is either free or owned by exactly one (seq, layer), the
  // free list has no duplicates, every table holds exactly BlocksForTokens(length) blocks, and the
  // counters agree. Returns Internal with the first violation found. O(num_blocks).
  Status CheckInvariants() const;

  // Storage, [num_blocks, Hkv, block_size, d] each. Writes go through PagedKvCache.
  const at::Tensor& k_cache() const { return k_cache_; }
  const at::Tensor& v_cache() const { return v_cache_; }

  int num_layers() const { return num_layers_; }
  int64_t num_kv_heads() const { return num_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  int block_size() const { return block_size_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  int64_t num_blocks_total() const { return num_blocks_; }
  int64_t num_blocks_free() const { return static_cast<int64_t>(free_list_.size()); }
  int64_t num_blocks_used() const { return num_blocks_ - num_blocks_free(); }
  int64_t bytes_per_block() const { return bytes_per_block_; }
  int64_t bytes_total() const { return num_blocks_ * bytes_per_block_; }
  int64_t bytes_used() const { return num_blocks_used() * bytes_per_block_; }

 private:
  struct LayerState {
    std::vector<BlockId> block_table;
    int64_t length = 0;  // tokens
  };

  BlockPool(const BlockPoolOptions& options, int64_t num_blocks, int64_t bytes_per_block);
  const LayerState* Find(SeqId seq, int layer) const;
  LayerState* Find(SeqId seq, int layer);

  int num_layers_;
  int64_t num_kv_heads_;
  int64_t head_dim_;
  int block_size_;
  at::ScalarType dtype_;
  at::Device device_;
  int64_t num_blocks_;
  int64_t bytes_per_block_;
  at::Tensor k_cache_;  // [num_blocks, Hkv, block_size, d]
  at::Tensor v_cache_;  // [num_blocks, Hkv, block_size, d]
  std::vector<BlockId> free_list_;  // a stack: back() is handed out next
  std::unordered_map<SeqId, std::vector<LayerState>> seqs_;  // seq -> [num_layers]
};

// KvCache over a BlockPool (see kv_cache.h for each method's meaning). Append converts k, v to
// the pool's dtype and device, grows the table and writes the tokens densely after the existing
// ones, so (seq, layer) always holds exactly ceil(len / block_size) blocks. On any error the pool
// is as before the call. Attend runs PagedDecodeAttention (paged_attention.h) over the tables;
// an unknown sequence or bad layer there throws c10::Error (the runner fails the request).
class PagedKvCache final : public KvCache {
 public:
  explicit PagedKvCache(BlockPool* pool) : pool_(pool) {}

  Status AddSequence(SeqId seq) override { return pool_->AddSequence(seq); }
  void FreeSequence(SeqId seq) override { pool_->FreeSequence(seq); }
  Status Append(SeqId seq, int layer, const at::Tensor& k, const at::Tensor& v) override;
  Status AppendDecode(int layer, const std::vector<SeqId>& seqs, const at::Tensor& k,
                      const at::Tensor& v) override;
  int64_t Length(SeqId seq, int layer) const override { return pool_->Length(seq, layer); }
  at::Tensor Attend(int layer, const std::vector<SeqId>& seqs, const at::Tensor& q, double scale) const override;

  const BlockPool& pool() const { return *pool_; }

 private:
  // Writes rows [n, Hkv, d] into the slots that follow old_lengths[i] of (seqs[i], layer), where
  // sequence i receives n / seqs.size() consecutive rows.
  void Write(int layer, const std::vector<SeqId>& seqs, const std::vector<int64_t>& old_lengths,
             const at::Tensor& k_rows, const at::Tensor& v_rows);

  BlockPool* pool_;  // not owned
};

// Device memory, for sizing the pool and for metrics. 0 on CPU or when unknown.
int64_t FreeDeviceMemory(at::Device device);
int64_t DeviceMemoryAllocated(at::Device device);

}  // namespace asl::kv

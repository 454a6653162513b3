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
// the free list exactly (when no cached block was evicted for it). LIFO reuses the most recently
// touched memory first (warm in cache).
//
// Prefix cache (docs/architecture.md, "Prefix cache"): a block may also hold one whole block of
// uncompressed prompt K/V of one layer, identified by the chained hash of its tokens (salted with
// the model and dtypes) and verified token by token. Blocks have reference counts (tables and
// pins); a cached block nobody references is *evictable*: it counts as free, and an allocation
// that finds the free list empty takes the least recently released one (deepest in its chain
// first, so leaves go before their parents). A cached block that is referenced is never written
// or freed under its owners: only whole blocks are cached, and sequences append after them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <set>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/common/status.h"
#include "engine/kv/kv_cache.h"

namespace asl::kv {

using BlockId = int32_t;
using BlockHash = uint64_t;

// The chained hashes of the whole blocks of `ids`: hash[b] covers ids[0, (b + 1) * block_size).
// The same function the pool uses, for callers that key their own state by prefix.
std::vector<BlockHash> ChainHashes(BlockHash salt, const std::vector<int32_t>& ids, int block_size);

// What LookupPrefix found: the longest prefix of a prompt, in whole blocks, whose K/V is cached at
// every layer.
struct CachedPrefix {
  int64_t num_tokens = 0;            // a multiple of block_size
  int64_t num_blocks_evictable = 0;  // of its num_layers x num_tokens / block_size blocks, those
                                     // nobody references (pinning them takes them from the free count)
};

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
  // FreeSequence drops every reference the sequence holds (tables and pins): blocks nobody else
  // references go back to the free list, or become evictable if cached; unknown ids are ignored.
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
  // The first num_tokens tokens held by `blocks`, in order: K and V [Hkv, num_tokens, d].
  std::pair<at::Tensor, at::Tensor> GatherBlocks(const std::vector<BlockId>& blocks, int64_t num_tokens) const;

  // ---- Prefix cache. Disabled (nothing is cached, lookups find nothing) until SetCacheCapacity.
  // At most max_cached_blocks blocks hold cached K/V at once (0 disables the cache and drops what
  // it holds). salt: mixed into every chain hash (the model and anything that changes the numbers).
  void SetCacheCapacity(int64_t max_cached_blocks, BlockHash salt);
  bool cache_enabled() const { return max_cached_blocks_ > 0; }
  // The longest cached prefix of ids of at most max_tokens tokens. Const: touches nothing.
  CachedPrefix LookupPrefix(const std::vector<int32_t>& ids, int64_t max_tokens) const;
  // Pins the cached prefix of `seq`'s prompt ids (num_tokens from LookupPrefix, in the same
  // engine step: nothing may allocate in between) so that it is not evicted while the sequence
  // reads it. share_into_tables: every layer's table (which must be empty) starts with those
  // blocks, shared (the sequence stores its prompt uncompressed and appends after them).
  // NotFound if the prefix is no longer cached; nothing changed then.
  Status PinPrefix(SeqId seq, const std::vector<int32_t>& ids, int64_t num_tokens, bool share_into_tables);
  int64_t PinnedTokens(SeqId seq) const;
  // The pinned blocks of (seq, layer), in token order (empty without a pinned prefix).
  const std::vector<BlockId>& pinned_blocks(SeqId seq, int layer) const;
  // Makes (seq, layer)'s empty table hold the pinned prefix, shared. InvalidArgument if the table
  // is not empty or nothing is pinned.
  Status SharePinned(SeqId seq, int layer);
  // Drops the sequence's pins (its tables keep what they share).
  void ReleasePins(SeqId seq);
  // Declares that (seq, layer)'s table holds the tokens ids[0, Length) in order and caches its
  // whole blocks of those tokens that are not cached yet (no copy). Later appends keep the order;
  // CacheSequence registers them.
  void CacheTable(SeqId seq, int layer, const std::vector<int32_t>& ids);
  // CacheTable for every layer so declared, over ids (prompt + fed outputs): a finishing
  // sequence's generated tokens join the cache where its KV is uncompressed.
  void CacheSequence(SeqId seq, const std::vector<int32_t>& ids);
  // Caches copies of uncompressed K/V [Hkv, m, d] of one layer for the tokens ids[first, first + m)
  // (first a multiple of block_size): every whole block not cached yet gets a block from the free
  // list or by eviction, written, evictable at once. Stops quietly when the cache is full.
  void CacheRows(int layer, const std::vector<int32_t>& ids, int64_t first, const at::Tensor& k, const at::Tensor& v);
  // Drops every cached block that nobody references, and forgets the hashes of the others.
  void ResetCache();

  int64_t num_blocks_cached() const { return num_cached_; }            // blocks holding cached K/V
  int64_t num_blocks_evictable() const { return static_cast<int64_t>(evictable_.size()); }
  int64_t num_evictions() const { return num_evictions_; }             // since creation

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
  // Free: on the free list, or cached and evictable (an allocation takes those when it must).
  int64_t num_blocks_free() const { return static_cast<int64_t>(free_list_.size() + evictable_.size()); }
  int64_t num_blocks_used() const { return num_blocks_ - num_blocks_free(); }
  int64_t bytes_per_block() const { return bytes_per_block_; }
  int64_t bytes_total() const { return num_blocks_ * bytes_per_block_; }
  int64_t bytes_used() const { return num_blocks_used() * bytes_per_block_; }

 private:
  struct LayerState {
    std::vector<BlockId> block_table;
    int64_t length = 0;     // tokens
    bool in_order = false;  // holds the sequence's tokens 0..length-1 in order (CacheTable)
  };
  struct SeqState {
    std::vector<LayerState> layers;           // [num_layers]
    std::vector<std::vector<BlockId>> pins;   // [num_layers] when a prefix is pinned, else empty
    int64_t pinned_tokens = 0;
  };
  struct BlockMeta {
    int32_t ref = 0;        // table entries + pins
    bool cached = false;
    BlockHash hash = 0;     // when cached
    int32_t layer = 0;
    int32_t depth = 0;      // block index in its chain
    uint64_t tick = 0;      // when it became evictable
  };
  // One block of tokens in a chain; its K/V per layer (-1 where not cached).
  struct CacheNode {
    BlockHash parent = 0;
    std::vector<int32_t> tokens;
    std::vector<BlockId> blocks;
    int num_present = 0;
  };
  using EvictKey = std::tuple<uint64_t, int32_t, int32_t, BlockId>;  // (tick, -depth, layer, block)

  BlockPool(const BlockPoolOptions& options, int64_t num_blocks, int64_t bytes_per_block);
  const LayerState* Find(SeqId seq, int layer) const;
  LayerState* Find(SeqId seq, int layer);
  // A block for writing: the free list's top, else the least recently released evictable block.
  // Requires num_blocks_free() > 0.
  BlockId TakeBlock();
  BlockId EvictOne();  // the least recently released evictable block, uncached; requires one
  void Ref(BlockId b);
  void Unref(BlockId b);
  void Uncache(BlockId b);  // forgets b's hash (b must not be on the evictable set)
  // The node of chain hash h if it holds exactly (parent, tokens ids[first, first + bs)).
  const CacheNode* Node(BlockHash h, BlockHash parent, const std::vector<int32_t>& ids, int64_t first) const;
  // Registers `b` (written with the K/V of block `depth` of ids at `layer`) under hash h. False when
  // the cache is full or the slot is taken (then b is unchanged).
  bool Register(BlockId b, int layer, BlockHash h, BlockHash parent, const std::vector<int32_t>& ids, int64_t depth);
  // Evicts one evictable block if the cache holds its maximum; false if that leaves no room.
  bool MakeCacheRoom();

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
  std::unordered_map<SeqId, SeqState> seqs_;
  std::vector<BlockMeta> meta_;     // [num_blocks]
  std::unordered_map<BlockHash, CacheNode> nodes_;
  std::set<EvictKey> evictable_;    // cached blocks with ref 0: begin() is evicted first
  int64_t max_cached_blocks_ = 0;
  BlockHash salt_ = 0;
  int64_t num_cached_ = 0;
  int64_t num_evictions_ = 0;
  uint64_t tick_ = 0;
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

  int64_t PrefixTokens(SeqId seq) const override { return pool_->PinnedTokens(seq); }
  std::pair<at::Tensor, at::Tensor> PrefixKv(SeqId seq, int layer) const override;
  Status SharePrefix(SeqId seq, int layer) override { return pool_->SharePinned(seq, layer); }
  void CacheTable(SeqId seq, int layer, const std::vector<int32_t>& ids) override { pool_->CacheTable(seq, layer, ids); }
  void CacheRows(int layer, const std::vector<int32_t>& ids, int64_t first, const at::Tensor& k,
                 const at::Tensor& v) override {
    pool_->CacheRows(layer, ids, first, k, v);
  }
  void CacheSequence(SeqId seq, const std::vector<int32_t>& ids) override { pool_->CacheSequence(seq, ids); }

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

// BlockAccounting: every piece of KV block arithmetic of the engine, in one place (the role of
// vLLM's KVCacheManager): what a request may ever hold (checked at Submit), what a waiting
// sequence needs free to be admitted, and what a running one must find free in a step. The
// scheduler only sums and compares these numbers; the engine and tests answer the pool's facts
// (free and total blocks, each layer's stored tokens) through PoolFacts.
//
// Why a sliced prefill claims the rest of its prompt: its layers write their KV over several
// engine steps, and decode steps between them must not take the blocks those layers will need,
// or the pool would over-commit and a half-done prefill would fail.
//
// Thread: Bounds() is pure and may be called from any thread; the rest reads the pool, on the
// engine thread. Tensor-free.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/sched/sequence.h"

namespace asl::sched {

// A waiting sequence's cached prompt prefix, as admitting it now would pin it.
struct PrefixHit {
  int64_t shared_blocks = 0;     // blocks its tables will share from admission (not allocated)
  int64_t evictable_blocks = 0;  // blocks of the prefix that are free now: pinning takes them
};

// The pool's facts, answered by the engine over its BlockPool (and by fakes in tests).
class PoolFacts {
 public:
  virtual ~PoolFacts() = default;
  virtual int64_t num_free_blocks() const = 0;    // free list + evictable cached blocks
  virtual int64_t num_total_blocks() const = 0;
  // Tokens stored for (seq, layer); 0 for a sequence the pool does not hold.
  virtual int64_t Length(RequestId seq, int layer) const = 0;
  // The prefix cache's hit for a waiting sequence (none without a prefix cache).
  virtual PrefixHit CachedPrefix(const Sequence& /*seq*/) const { return {}; }
};

// A request's block bounds, fixed at Submit.
struct RequestBlocks {
  int64_t prompt = 0;    // upper bound of its prompt's KV blocks after pruning
  int64_t lifetime = 0;  // upper bound of all its blocks: prompt after pruning + max_tokens outputs
};

class BlockAccounting {
 public:
  BlockAccounting(int num_layers, int block_size, const PoolFacts* pool)
      : num_layers_(num_layers), block_size_(block_size), pool_(pool) {}

  int num_layers() const { return num_layers_; }
  int block_size() const { return block_size_; }
  int64_t BlocksForTokens(int64_t num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }

  // From the upper bound of each layer's prompt KV tokens after pruning (prune::KvTokensUpperBound)
  // and max_tokens. The lifetime is at least the prompt plus one decode block per layer.
  RequestBlocks Bounds(const std::vector<int64_t>& prompt_kv_tokens_per_layer, int64_t max_tokens) const;

  int64_t num_free_blocks() const { return pool_->num_free_blocks(); }
  int64_t num_total_blocks() const { return pool_->num_total_blocks(); }

  // Blocks `seq` holds now.
  int64_t Held(const Sequence& seq) const;
  // New blocks that appending one token to every layer of `seq` takes.
  int64_t ForNextToken(const Sequence& seq) const;
  // What a running sequence must find free in this step: a decoding one, its next token's blocks;
  // one whose prefill is in flight, the rest of its prompt's bound (the slices still to come write
  // it).
  int64_t ForStep(const Sequence& seq) const;
  // What must be free to admit `seq` now: its prompt's bound (less the cached blocks its tables
  // share, plus the free cached blocks it pins), the blocks of the outputs a preempted sequence
  // replays through decode, and one decode block per layer of headroom.
  int64_t ToAdmit(const Sequence& seq) const;
  // What reserve admission sets aside for `seq` for its whole life.
  int64_t Reserved(const Sequence& seq) const;

 private:
  int num_layers_;
  int block_size_;
  const PoolFacts* pool_;  // not owned
};

}  // namespace asl::sched

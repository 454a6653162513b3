// The prefix cache inside BlockPool, on tiny pools with exact block ids (vLLM's style): hits on whole
// blocks only, the partial last block never shared, eviction order (least recently released, leaves
// first), a shared block survives one owner's free, reference counts return to zero, copies read
// back exactly, and 100k random operations keep every invariant.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <vector>

#include "engine/kv/block_pool.h"

namespace asl::kv {
namespace {

using Table = std::vector<BlockId>;
using Ids = std::vector<int32_t>;

// L layers, block size 4, Hkv 1, d 2, float32; the cache may hold every block.
std::unique_ptr<BlockPool> CachePool(int num_layers, int64_t num_blocks, int64_t capacity = -1) {
  auto pool = BlockPool::Create(BlockPoolOptions{num_layers, 1, 2, at::kFloat, at::kCPU, 4, num_blocks, 0});
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  (*pool)->SetCacheCapacity(capacity < 0 ? num_blocks : capacity, /*salt=*/77);
  return std::move(pool).value();
}

Ids Range(int32_t from, int32_t n) {
  Ids ids;
  for (int32_t i = 0; i < n; ++i) ids.push_back(from + i);
  return ids;
}

// A sequence that stored `ids` in order at every layer (as full attention does) and declared it.
void StoreInOrder(BlockPool& pool, SeqId seq, const Ids& ids) {
  ASSERT_TRUE(pool.AddSequence(seq).ok());
  for (int l = 0; l < pool.num_layers(); ++l) {
    ASSERT_TRUE(pool.Grow(l, {seq}, static_cast<int64_t>(ids.size())).ok());
    pool.CacheTable(seq, l, ids);
  }
}

void ExpectSound(const BlockPool& pool) {
  const Status st = pool.CheckInvariants();
  EXPECT_TRUE(st.ok()) << st.ToString();
}

TEST(PrefixCacheTest, HitsOnWholeBlocksOnly) {
  auto pool = CachePool(/*num_layers=*/2, /*num_blocks=*/16);
  const Ids a = Range(100, 10);  // blocks [0,4) [4,8) cached; [8,10) partial, never
  StoreInOrder(*pool, 1, a);
  EXPECT_EQ(pool->block_table(1, 0), (Table{0, 1, 2}));
  EXPECT_EQ(pool->block_table(1, 1), (Table{3, 4, 5}));
  EXPECT_EQ(pool->num_blocks_cached(), 4);  // 2 whole blocks x 2 layers
  ExpectSound(*pool);

  EXPECT_EQ(pool->LookupPrefix(a, 10).num_tokens, 8);
  EXPECT_EQ(pool->LookupPrefix(a, 7).num_tokens, 4);   // bounded by max_tokens, whole blocks
  EXPECT_EQ(pool->LookupPrefix(a, 3).num_tokens, 0);
  Ids b = a;
  b[5] = 7;  // differs inside the second block
  EXPECT_EQ(pool->LookupPrefix(b, 10).num_tokens, 4);
  Ids c = a;
  c[0] = 7;  // the first block differs: the chain is not found at all
  EXPECT_EQ(pool->LookupPrefix(c, 10).num_tokens, 0);
  // Everything is in use by sequence 1: nothing of the hit is free.
  EXPECT_EQ(pool->LookupPrefix(a, 10).num_blocks_evictable, 0);
}

TEST(PrefixCacheTest, FreedBlocksStayCachedAndCountAsFree) {
  auto pool = CachePool(2, 16);
  const Ids a = Range(100, 10);
  StoreInOrder(*pool, 1, a);
  pool->FreeSequence(1);
  // The 4 cached blocks are evictable (free), the 2 partial ones went back to the free list.
  EXPECT_EQ(pool->num_blocks_free(), 16);
  EXPECT_EQ(pool->num_blocks_used(), 0);
  EXPECT_EQ(pool->num_blocks_evictable(), 4);
  EXPECT_EQ(pool->num_blocks_cached(), 4);
  const CachedPrefix hit = pool->LookupPrefix(a, 10);
  EXPECT_EQ(hit.num_tokens, 8);
  EXPECT_EQ(hit.num_blocks_evictable, 4);
  ExpectSound(*pool);
}

TEST(PrefixCacheTest, PinSharesIntoTablesAndSurvivesTheOwnersFree) {
  auto pool = CachePool(2, 16);
  const Ids a = Range(100, 10);
  StoreInOrder(*pool, 1, a);
  Ids b = Range(100, 8);
  b.push_back(5);
  b.push_back(6);
  b.push_back(7);  // 11 tokens: 8 cached
  ASSERT_TRUE(pool->AddSequence(2).ok());
  ASSERT_TRUE(pool->PinPrefix(2, b, 8, /*share_into_tables=*/true).ok());
  EXPECT_EQ(pool->PinnedTokens(2), 8);
  EXPECT_EQ(pool->pinned_blocks(2, 0), (Table{0, 1}));
  EXPECT_EQ(pool->pinned_blocks(2, 1), (Table{3, 4}));
  EXPECT_EQ(pool->block_table(2, 0), (Table{0, 1}));
  EXPECT_EQ(pool->Length(2, 1), 8);
  // Sequence 2 appends after the shared blocks, into a block of its own.
  ASSERT_TRUE(pool->Grow(0, {2}, 3).ok());
  EXPECT_EQ(pool->block_table(2, 0), (Table{0, 1, 6}));
  ExpectSound(*pool);

  pool->FreeSequence(1);  // the shared blocks survive: sequence 2 references them
  EXPECT_EQ(pool->num_blocks_evictable(), 0);
  EXPECT_EQ(pool->block_table(2, 0), (Table{0, 1, 6}));
  pool->ReleasePins(2);
  EXPECT_EQ(pool->PinnedTokens(2), 0);
  EXPECT_EQ(pool->num_blocks_evictable(), 0);  // its tables still hold them
  ExpectSound(*pool);
  pool->FreeSequence(2);
  EXPECT_EQ(pool->num_blocks_used(), 0);
  EXPECT_EQ(pool->num_blocks_evictable(), 4);
  EXPECT_EQ(pool->num_blocks_free(), 16);
  ExpectSound(*pool);
}

TEST(PrefixCacheTest, PinWithoutSharingLeavesTablesEmpty) {
  auto pool = CachePool(2, 16);
  const Ids a = Range(100, 8);
  StoreInOrder(*pool, 1, a);
  pool->FreeSequence(1);
  ASSERT_TRUE(pool->AddSequence(2).ok());
  ASSERT_TRUE(pool->PinPrefix(2, a, 8, /*share_into_tables=*/false).ok());
  EXPECT_EQ(pool->Length(2, 0), 0);
  EXPECT_EQ(pool->num_blocks_evictable(), 0);  // pinned: no longer free
  EXPECT_EQ(pool->num_blocks_free(), 12);
  ASSERT_TRUE(pool->SharePinned(2, 1).ok());  // one layer takes them after all
  EXPECT_EQ(pool->block_table(2, 1), (Table{2, 3}));
  EXPECT_FALSE(pool->SharePinned(2, 1).ok());  // not empty any more
  ExpectSound(*pool);
  // A prefix that is not cached cannot be pinned, and nothing changes.
  ASSERT_TRUE(pool->AddSequence(3).ok());
  EXPECT_EQ(pool->PinPrefix(3, Range(500, 8), 8, false).code(), StatusCode::kNotFound);
  EXPECT_EQ(pool->PinnedTokens(3), 0);
  pool->FreeSequence(2);
  pool->FreeSequence(3);
  EXPECT_EQ(pool->num_blocks_evictable(), 4);
  ExpectSound(*pool);
}

TEST(PrefixCacheTest, EvictsLeastRecentlyReleasedDeepestFirst) {
  // 1 layer, 6 blocks. Chain a: blocks 0, 1 (released first); chain b: blocks 2, 3 (later).
  auto pool = CachePool(1, 6);
  StoreInOrder(*pool, 1, Range(100, 8));
  StoreInOrder(*pool, 2, Range(200, 8));
  EXPECT_EQ(pool->block_table(1, 0), (Table{0, 1}));
  EXPECT_EQ(pool->block_table(2, 0), (Table{2, 3}));
  pool->FreeSequence(1);
  pool->FreeSequence(2);
  ASSERT_TRUE(pool->AddSequence(3).ok());
  // Blocks 4 and 5 come from the free list, then evictions: a's leaf (1), a's root (0), b's leaf (3).
  ASSERT_TRUE(pool->Grow(0, {3}, 4 * 5).ok());
  EXPECT_EQ(pool->block_table(3, 0), (Table{4, 5, 1, 0, 3}));
  EXPECT_EQ(pool->num_evictions(), 3);
  EXPECT_EQ(pool->LookupPrefix(Range(100, 8), 8).num_tokens, 0);
  EXPECT_EQ(pool->LookupPrefix(Range(200, 8), 8).num_tokens, 4);  // b's root is left
  ExpectSound(*pool);
  // A hit makes nothing more recent (lookups are const); a pin and release does.
}

TEST(PrefixCacheTest, EveryLayerMustHoldTheBlock) {
  auto pool = CachePool(2, 8);
  const Ids a = Range(100, 8);
  ASSERT_TRUE(pool->AddSequence(1).ok());
  ASSERT_TRUE(pool->Grow(0, {1}, 8).ok());
  ASSERT_TRUE(pool->Grow(1, {1}, 8).ok());
  pool->CacheTable(1, 0, a);  // layer 1 stores something else (compressed): not declared
  EXPECT_EQ(pool->num_blocks_cached(), 2);
  EXPECT_EQ(pool->LookupPrefix(a, 8).num_tokens, 0);
  // Copies of layer 1's uncompressed rows complete the chain.
  at::Tensor k = at::arange(16, at::kFloat).view({1, 8, 2}), v = k + 100;
  pool->CacheRows(1, a, 0, k, v);
  EXPECT_EQ(pool->num_blocks_cached(), 4);
  EXPECT_EQ(pool->LookupPrefix(a, 8).num_tokens, 8);
  ASSERT_TRUE(pool->AddSequence(2).ok());
  ASSERT_TRUE(pool->PinPrefix(2, a, 8, false).ok());
  auto [gk, gv] = pool->GatherBlocks(pool->pinned_blocks(2, 1), 8);
  EXPECT_TRUE(at::equal(gk, k));
  EXPECT_TRUE(at::equal(gv, v));
  ExpectSound(*pool);
}

TEST(PrefixCacheTest, CapacityAndResetAndDisabled) {
  auto pool = CachePool(1, 8, /*capacity=*/2);
  StoreInOrder(*pool, 1, Range(100, 16));  // 4 whole blocks, only 2 may be cached
  EXPECT_EQ(pool->num_blocks_cached(), 2);
  EXPECT_EQ(pool->LookupPrefix(Range(100, 16), 16).num_tokens, 8);
  pool->FreeSequence(1);
  EXPECT_EQ(pool->num_blocks_evictable(), 2);
  pool->ResetCache();
  EXPECT_EQ(pool->num_blocks_cached(), 0);
  EXPECT_EQ(pool->num_blocks_evictable(), 0);
  EXPECT_EQ(pool->num_blocks_free(), 8);
  EXPECT_EQ(pool->LookupPrefix(Range(100, 16), 16).num_tokens, 0);
  ExpectSound(*pool);
  pool->SetCacheCapacity(0, 77);
  StoreInOrder(*pool, 2, Range(100, 16));
  EXPECT_EQ(pool->num_blocks_cached(), 0);
  ExpectSound(*pool);
}

TEST(PrefixCacheTest, GeneratedTokensJoinTheCacheAtTheEnd) {
  auto pool = CachePool(1, 16);
  Ids prompt = Range(100, 6);
  StoreInOrder(*pool, 1, prompt);  // 1 whole block cached
  for (int t = 0; t < 5; ++t) ASSERT_TRUE(pool->Grow(0, {1}, 1).ok());  // decode: 11 tokens
  Ids all = prompt;
  for (int32_t t : Range(900, 5)) all.push_back(t);
  pool->CacheSequence(1, all);
  pool->FreeSequence(1);
  EXPECT_EQ(pool->LookupPrefix(all, 11).num_tokens, 8);
  ExpectSound(*pool);
}

// Random sequences, growth, truncation, frees, pins, cache offers and resets on a small pool; the
// invariants (reference counts equal table + pin entries, every block in exactly one place, the
// cache index agrees with the blocks, the capacity holds) are checked after every operation.
TEST(PrefixCacheTest, RandomOperationsKeepTheInvariants) {
  constexpr int kLayers = 2;
  auto pool = CachePool(kLayers, 48, /*capacity=*/30);
  std::mt19937_64 rng(11);
  // A few prompt families that share prefixes, so hits happen.
  auto prompt = [&](int64_t n) {
    Ids ids;
    const int32_t family = static_cast<int32_t>(rng() % 3);
    for (int64_t i = 0; i < n; ++i) ids.push_back(family * 1000 + static_cast<int32_t>(i < 8 ? i : rng() % 4));
    return ids;
  };
  std::map<SeqId, Ids> live;
  SeqId next = 1;
  int64_t hits = 0, evictions_seen = 0;
  for (int op = 0; op < 100000; ++op) {
    const int kind = static_cast<int>(rng() % 8);
    if (kind <= 1 || live.empty()) {
      if (live.size() >= 6) continue;
      const SeqId seq = next++;
      const Ids ids = prompt(4 + static_cast<int64_t>(rng() % 16));
      ASSERT_TRUE(pool->AddSequence(seq).ok());
      const CachedPrefix hit = pool->LookupPrefix(ids, static_cast<int64_t>(ids.size()) - 1);
      const bool share = rng() % 2;
      int64_t stored = 0;
      if (hit.num_tokens > 0) {
        ASSERT_TRUE(pool->PinPrefix(seq, ids, hit.num_tokens, share).ok());
        hits++;
        if (share) stored = hit.num_tokens;
      }
      // The rest of the prompt, in order, when it fits; else the sequence just stays short.
      const int64_t rest = static_cast<int64_t>(ids.size()) - stored;
      bool ok = true;
      for (int l = 0; l < kLayers && ok; ++l) ok = pool->Grow(l, {seq}, rest).ok();
      if (ok) {
        for (int l = 0; l < kLayers; ++l) pool->CacheTable(seq, l, ids);
      }
      live[seq] = ids;
    } else if (kind == 2) {
      auto it = std::next(live.begin(), static_cast<int64_t>(rng() % live.size()));
      if (rng() % 2) pool->CacheSequence(it->first, it->second);
      pool->FreeSequence(it->first);
      live.erase(it);
    } else if (kind == 3) {
      auto it = std::next(live.begin(), static_cast<int64_t>(rng() % live.size()));
      pool->ReleasePins(it->first);
    } else if (kind == 4) {
      auto it = std::next(live.begin(), static_cast<int64_t>(rng() % live.size()));
      const int layer = static_cast<int>(rng() % kLayers);
      const int64_t len = pool->Length(it->first, layer);
      ASSERT_TRUE(pool->Truncate(it->first, layer, len == 0 ? 0 : static_cast<int64_t>(rng() % (len + 1))).ok());
    } else if (kind == 5) {
      const Ids ids = prompt(4 + static_cast<int64_t>(rng() % 16));
      const int layer = static_cast<int>(rng() % kLayers);
      at::Tensor k = at::randn({1, static_cast<int64_t>(ids.size()), 2}), v = at::randn({1, static_cast<int64_t>(ids.size()), 2});
      pool->CacheRows(layer, ids, 0, k, v);
    } else if (kind == 6) {
      auto it = std::next(live.begin(), static_cast<int64_t>(rng() % live.size()));
      const int layer = static_cast<int>(rng() % kLayers);
      (void)pool->Grow(layer, {it->first}, 1 + static_cast<int64_t>(rng() % 6));  // may fail: pool full
    } else if (op % 5000 == 7) {
      pool->ResetCache();
    }
    const Status st = pool->CheckInvariants();
    ASSERT_TRUE(st.ok()) << "op " << op << ": " << st.ToString();
    evictions_seen = pool->num_evictions();
  }
  EXPECT_GT(hits, 1000);
  EXPECT_GT(evictions_seen, 100);
  for (const auto& [seq, ids] : live) pool->FreeSequence(seq);
  EXPECT_EQ(pool->num_blocks_used(), 0);
  EXPECT_EQ(pool->num_blocks_free(), pool->num_blocks_total());
  ExpectSound(*pool);
}

}  // namespace
}  // namespace asl::kv

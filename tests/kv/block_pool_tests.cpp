// BlockPool bookkeeping on tiny pools: exact block ids, LIFO free order, all-or-nothing failures,
// and a long random run checked against a model after every operation.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <vector>

#include "engine/kv/block_pool.h"

namespace asl::kv {
namespace {

using Table = std::vector<BlockId>;

std::unique_ptr<BlockPool> MakePool(int num_layers, int64_t num_blocks, int block_size = 4, int64_t hkv = 1,
                                    int64_t d = 2, at::ScalarType dtype = at::kFloat) {
  auto pool = BlockPool::Create(BlockPoolOptions{num_layers, hkv, d, dtype, at::kCPU, block_size, num_blocks, 0});
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return std::move(pool).value();
}

// Everything a failed call must leave as it was.
struct Snapshot {
  std::map<std::pair<SeqId, int>, std::pair<Table, int64_t>> tables;
  int64_t num_free = 0;
  int64_t bytes_used = 0;
  bool operator==(const Snapshot&) const = default;
};

Snapshot Take(const BlockPool& pool, const std::vector<SeqId>& seqs) {
  Snapshot s;
  for (SeqId seq : seqs) {
    for (int l = 0; l < pool.num_layers(); ++l) s.tables[{seq, l}] = {pool.block_table(seq, l), pool.Length(seq, l)};
  }
  s.num_free = pool.num_blocks_free();
  s.bytes_used = pool.bytes_used();
  return s;
}

TEST(BlockPoolTest, CreateSizesFromCountOrBytes) {
  auto pool = MakePool(/*num_layers=*/2, /*num_blocks=*/6);
  EXPECT_EQ(pool->num_blocks_total(), 6);
  EXPECT_EQ(pool->num_blocks_free(), 6);
  EXPECT_EQ(pool->num_blocks_used(), 0);
  EXPECT_EQ(pool->bytes_per_block(), 2 * 1 * 4 * 2 * 4);  // K+V, Hkv, block_size, d, sizeof(float)
  EXPECT_EQ(pool->bytes_total(), 6 * 64);
  EXPECT_EQ(pool->bytes_used(), 0);
  EXPECT_EQ(pool->k_cache().sizes(), (std::vector<int64_t>{6, 1, 4, 2}));
  EXPECT_EQ(pool->BlocksForTokens(0), 0);
  EXPECT_EQ(pool->BlocksForTokens(4), 1);
  EXPECT_EQ(pool->BlocksForTokens(5), 2);

  // bf16, Hkv 2, d 8, block 16: 2 * 2 * 16 * 8 * 2 = 1024 bytes a block; 10000 bytes -> 9 blocks.
  auto budget = BlockPool::Create(BlockPoolOptions{4, 2, 8, at::kBFloat16, at::kCPU, 16, 0, 10000});
  ASSERT_TRUE(budget.ok());
  EXPECT_EQ((*budget)->bytes_per_block(), 1024);
  EXPECT_EQ((*budget)->num_blocks_total(), 9);
  EXPECT_EQ((*budget)->k_cache().scalar_type(), at::kBFloat16);

  EXPECT_EQ(BlockPool::Create(BlockPoolOptions{4, 2, 8, at::kFloat, at::kCPU, 16, 0, 100}).status().code(),
            StatusCode::kResourceExhausted);
  auto half = BlockPool::Create(BlockPoolOptions{4, 2, 8, at::kHalf, at::kCPU, 16, 0, 10000});
  ASSERT_TRUE(half.ok());
  EXPECT_EQ((*half)->bytes_per_block(), 1024);
  EXPECT_EQ((*half)->k_cache().scalar_type(), at::kHalf);
  EXPECT_EQ(BlockPool::Create(BlockPoolOptions{4, 2, 8, at::kDouble, at::kCPU, 16, 4, 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockPool::Create(BlockPoolOptions{4, 2, 8, at::kChar, at::kCPU, 16, 4, 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockPool::Create(BlockPoolOptions{4, 2, 8, at::kFloat, at::kCPU, 0, 4, 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(BlockPool::Create(BlockPoolOptions{0, 2, 8, at::kFloat, at::kCPU, 16, 4, 0}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(BlockPoolTest, ExactBlockIdsAndLifoFreeOrder) {
  auto pool = MakePool(/*num_layers=*/2, /*num_blocks=*/6);
  ASSERT_TRUE(pool->AddSequence(1).ok());
  ASSERT_TRUE(pool->AddSequence(2).ok());
  EXPECT_EQ(pool->AddSequence(1).code(), StatusCode::kInvalidArgument);

  ASSERT_TRUE(pool->Grow(0, {1}, 5).ok());  // 5 tokens -> 2 blocks
  ASSERT_TRUE(pool->Grow(1, {1}, 3).ok());
  ASSERT_TRUE(pool->Grow(0, {2}, 4).ok());
  EXPECT_EQ(pool->block_table(1, 0), (Table{0, 1}));
  EXPECT_EQ(pool->block_table(1, 1), (Table{2}));
  EXPECT_EQ(pool->block_table(2, 0), (Table{3}));
  EXPECT_EQ(pool->block_table(2, 1), (Table{}));
  EXPECT_EQ(pool->Length(1, 0), 5);
  EXPECT_EQ(pool->Length(1, 1), 3);
  EXPECT_EQ(pool->num_blocks_used(), 4);
  EXPECT_EQ(pool->bytes_used(), 4 * 64);

  // Filling the last slot of a block takes nothing; the next token takes a block.
  EXPECT_EQ(pool->BlocksToGrow(1, 1, 1), 0);
  ASSERT_TRUE(pool->Grow(1, {1}, 1).ok());
  EXPECT_EQ(pool->block_table(1, 1), (Table{2}));
  EXPECT_EQ(pool->BlocksToGrow(1, 1, 1), 1);
  ASSERT_TRUE(pool->Grow(1, {2}, 1).ok());  // seq 2, layer 1: block 4
  EXPECT_EQ(pool->block_table(2, 1), (Table{4}));
  ASSERT_TRUE(pool->CheckInvariants().ok());

  // Freeing pushes in reverse (layer 1's [2] first, then layer 0's [1], [0]): the next
  // allocations get 0, 1, 2 back, then 5, the never-used block.
  pool->FreeSequence(1);
  EXPECT_EQ(pool->num_blocks_free(), 4);
  EXPECT_FALSE(pool->HasSequence(1));
  ASSERT_TRUE(pool->AddSequence(3).ok());
  ASSERT_TRUE(pool->Grow(0, {3}, 9).ok());
  EXPECT_EQ(pool->block_table(3, 0), (Table{0, 1, 2}));
  ASSERT_TRUE(pool->Grow(1, {3}, 1).ok());
  EXPECT_EQ(pool->block_table(3, 1), (Table{5}));
  EXPECT_EQ(pool->num_blocks_free(), 0);

  // LIFO: seq 2 frees [4] (layer 1) then [3] (layer 0); 3 is handed out first.
  pool->FreeSequence(2);
  ASSERT_TRUE(pool->Grow(1, {3}, 4).ok());
  EXPECT_EQ(pool->block_table(3, 1), (Table{5, 3}));
  ASSERT_TRUE(pool->Grow(0, {3}, 4).ok());
  EXPECT_EQ(pool->block_table(3, 0), (Table{0, 1, 2, 4}));
  ASSERT_TRUE(pool->CheckInvariants().ok());

  // Truncate returns trailing blocks; growing again gets the same ids back.
  ASSERT_TRUE(pool->Truncate(3, 0, 5).ok());
  EXPECT_EQ(pool->block_table(3, 0), (Table{0, 1}));
  ASSERT_TRUE(pool->Grow(0, {3}, 8).ok());
  EXPECT_EQ(pool->block_table(3, 0), (Table{0, 1, 2, 4}));
  EXPECT_EQ(pool->Truncate(3, 0, 99).code(), StatusCode::kInvalidArgument);

  pool->FreeSequence(3);
  pool->FreeSequence(3);  // unknown now: ignored
  EXPECT_EQ(pool->num_blocks_free(), 6);
  EXPECT_EQ(pool->bytes_used(), 0);
  ASSERT_TRUE(pool->CheckInvariants().ok());
}

TEST(BlockPoolTest, BatchGrowAllocatesInSequenceOrder) {
  auto pool = MakePool(/*num_layers=*/1, /*num_blocks=*/6);
  for (SeqId s : {7, 8, 9}) ASSERT_TRUE(pool->AddSequence(s).ok());
  ASSERT_TRUE(pool->Grow(0, {9, 7, 8}, 1).ok());
  EXPECT_EQ(pool->block_table(9, 0), (Table{0}));
  EXPECT_EQ(pool->block_table(7, 0), (Table{1}));
  EXPECT_EQ(pool->block_table(8, 0), (Table{2}));
  ASSERT_TRUE(pool->Grow(0, {7, 8, 9}, 3).ok());  // fills the blocks: nothing new
  EXPECT_EQ(pool->num_blocks_used(), 3);
  ASSERT_TRUE(pool->Grow(0, {8, 9, 7}, 1).ok());
  EXPECT_EQ(pool->block_table(8, 0), (Table{2, 3}));
  EXPECT_EQ(pool->block_table(9, 0), (Table{0, 4}));
  EXPECT_EQ(pool->block_table(7, 0), (Table{1, 5}));
}

TEST(BlockPoolTest, FailedGrowLeavesNoTrace) {
  auto pool = MakePool(/*num_layers=*/2, /*num_blocks=*/6);
  for (SeqId s : {1, 2}) ASSERT_TRUE(pool->AddSequence(s).ok());
  ASSERT_TRUE(pool->Grow(0, {1}, 8).ok());  // [0, 1]
  ASSERT_TRUE(pool->Grow(0, {2}, 7).ok());  // [2, 3]
  const Snapshot before = Take(*pool, {1, 2});
  ASSERT_EQ(pool->num_blocks_free(), 2);
  EXPECT_TRUE(pool->CanAllocate(2));
  EXPECT_FALSE(pool->CanAllocate(3));

  // Seq 2 fits in its last block, seq 1 needs one block, and layer 1 needs one for each: 3 > 2.
  EXPECT_EQ(pool->BlocksToGrow(1, 0, 1) + pool->BlocksToGrow(2, 0, 1), 1);
  EXPECT_EQ(pool->Grow(1, {1, 2}, 5).code(), StatusCode::kResourceExhausted);  // 2 + 2 blocks
  EXPECT_EQ(Take(*pool, {1, 2}), before);
  EXPECT_EQ(pool->Grow(0, {2, 1}, 5).code(), StatusCode::kResourceExhausted);  // 1 + 2 blocks
  EXPECT_EQ(Take(*pool, {1, 2}), before);
  EXPECT_EQ(pool->Grow(0, {1, 99}, 1).code(), StatusCode::kNotFound);
  EXPECT_EQ(pool->Grow(0, {1, 2, 1}, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Grow(2, {1}, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->Grow(0, {1}, -1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Take(*pool, {1, 2}), before);
  ASSERT_TRUE(pool->CheckInvariants().ok());

  // The free order is untouched too: the next blocks are still 4 then 5.
  ASSERT_TRUE(pool->Grow(1, {2, 1}, 1).ok());
  EXPECT_EQ(pool->block_table(2, 1), (Table{4}));
  EXPECT_EQ(pool->block_table(1, 1), (Table{5}));
}

TEST(BlockPoolTest, FreeingEverythingReturnsTheWholePool) {
  auto pool = MakePool(/*num_layers=*/3, /*num_blocks=*/40);
  for (SeqId s = 0; s < 6; ++s) {
    ASSERT_TRUE(pool->AddSequence(s).ok());
    for (int l = 0; l < 3; ++l) ASSERT_TRUE(pool->Grow(l, {s}, (s * 3 + l) % 9).ok());
  }
  EXPECT_GT(pool->num_blocks_used(), 0);
  for (SeqId s : {3, 0, 5, 1, 4, 2}) {
    pool->FreeSequence(s);
    ASSERT_TRUE(pool->CheckInvariants().ok());
  }
  EXPECT_EQ(pool->num_blocks_free(), 40);
  EXPECT_EQ(pool->num_blocks_used(), 0);
  EXPECT_EQ(pool->num_sequences(), 0);
}

TEST(BlockPoolTest, CheckInvariantsPassesOnEmptyPool) {
  auto pool = MakePool(/*num_layers=*/1, /*num_blocks=*/3);
  EXPECT_TRUE(pool->CheckInvariants().ok());
  ASSERT_TRUE(pool->AddSequence(1).ok());
  EXPECT_TRUE(pool->CheckInvariants().ok());
}

// 100k random operations through PagedKvCache on a tiny pool. Every token written carries a unique
// value, so reading back checks compaction and block reuse; after every operation the pool's
// invariants hold and its accounting matches the model; a failed operation changes nothing and
// fails exactly when the pool said it could not allocate.
TEST(BlockPoolTest, RandomOperationsKeepInvariants) {
  constexpr int kLayers = 3;
  constexpr int kBlockSize = 4;
  constexpr int64_t kHkv = 2, kD = 2;
  auto pool = MakePool(kLayers, /*num_blocks=*/48, kBlockSize, kHkv, kD);
  PagedKvCache cache(pool.get());
  std::mt19937 rng(20240611);
  std::map<SeqId, std::vector<std::vector<float>>> model;  // seq -> layer -> token values
  SeqId next_seq = 0;
  float next_value = 1;
  int64_t num_failures = 0;

  // Token value x is stored as k[h] = (x + h, -x), v[h] = (-x - h, x).
  auto make_kv = [&](int64_t n, std::vector<float>& values) {
    at::Tensor k = at::empty({kHkv, n, kD}, at::kFloat), v = at::empty({kHkv, n, kD}, at::kFloat);
    auto ka = k.accessor<float, 3>();
    auto va = v.accessor<float, 3>();
    for (int64_t t = 0; t < n; ++t) {
      const float x = next_value++;
      values.push_back(x);
      for (int64_t h = 0; h < kHkv; ++h) {
        ka[h][t][0] = x + static_cast<float>(h);
        ka[h][t][1] = -x;
        va[h][t][0] = -x - static_cast<float>(h);
        va[h][t][1] = x;
      }
    }
    return std::make_pair(k, v);
  };
  auto check_data = [&] {
    for (const auto& [seq, layers] : model) {
      for (int l = 0; l < kLayers; ++l) {
        auto [k, v] = pool->Gather(seq, l);
        const auto& values = layers[static_cast<size_t>(l)];
        ASSERT_EQ(k.size(1), static_cast<int64_t>(values.size()));
        at::Tensor x = at::tensor(values, at::kFloat);
        ASSERT_TRUE(at::equal(k.select(2, 1), -x.unsqueeze(0).expand({kHkv, -1})));
        ASSERT_TRUE(at::equal(v.select(2, 1), x.unsqueeze(0).expand({kHkv, -1})));
        ASSERT_TRUE(at::equal(k.select(2, 0), x.unsqueeze(0) + at::arange(kHkv, at::kFloat).unsqueeze(1)));
      }
    }
  };

  for (int op = 0; op < 100000; ++op) {
    std::vector<SeqId> live;
    for (const auto& [seq, unused] : model) live.push_back(seq);
    int kind = static_cast<int>(rng() % 10);
    if (kind == 0 && live.size() >= 16) kind = 1;  // keep the live set small so each check stays cheap
    if (kind == 0 || live.empty()) {
      ASSERT_TRUE(cache.AddSequence(next_seq).ok());
      model[next_seq++] = std::vector<std::vector<float>>(kLayers);
    } else if (kind == 1) {
      const SeqId seq = live[rng() % live.size()];
      cache.FreeSequence(seq);
      model.erase(seq);
    } else {
      const int layer = static_cast<int>(rng() % kLayers);
      std::vector<SeqId> seqs;
      int64_t n = 1;
      if (kind < 6) {
        seqs.push_back(live[rng() % live.size()]);
        n = static_cast<int64_t>(rng() % (3 * kBlockSize));
      } else {
        std::shuffle(live.begin(), live.end(), rng);
        seqs.assign(live.begin(), live.begin() + 1 + static_cast<int64_t>(rng() % live.size()));
      }
      int64_t needed = 0;
      for (SeqId s : seqs) needed += pool->BlocksToGrow(s, layer, n);
      const bool fits = pool->CanAllocate(needed);
      const Snapshot before = Take(*pool, live);
      std::vector<std::vector<float>> values(seqs.size());
      Status st;
      if (kind < 6) {
        auto [k, v] = make_kv(n, values[0]);
        st = cache.Append(seqs[0], layer, k, v);
      } else {
        std::vector<at::Tensor> ks, vs;
        for (size_t i = 0; i < seqs.size(); ++i) {
          auto [k, v] = make_kv(1, values[i]);
          ks.push_back(k.squeeze(1));
          vs.push_back(v.squeeze(1));
        }
        st = cache.AppendDecode(layer, seqs, at::stack(ks), at::stack(vs));
      }
      ASSERT_EQ(st.ok(), fits) << "op " << op << ": " << st.ToString();
      if (st.ok()) {
        for (size_t i = 0; i < seqs.size(); ++i) {
          auto& stored = model[seqs[i]][static_cast<size_t>(layer)];
          stored.insert(stored.end(), values[i].begin(), values[i].end());
        }
      } else {
        ASSERT_EQ(st.code(), StatusCode::kResourceExhausted);
        ASSERT_EQ(Take(*pool, live), before) << "op " << op;
        num_failures++;
      }
    }
    const Status inv = pool->CheckInvariants();
    ASSERT_TRUE(inv.ok()) << "op " << op << ": " << inv.ToString();
    int64_t expected_used = 0;
    for (const auto& [seq, layers] : model) {
      for (int l = 0; l < kLayers; ++l) {
        ASSERT_EQ(cache.Length(seq, l), static_cast<int64_t>(layers[static_cast<size_t>(l)].size()));
        expected_used += pool->BlocksForTokens(static_cast<int64_t>(layers[static_cast<size_t>(l)].size()));
      }
    }
    ASSERT_EQ(pool->num_blocks_used(), expected_used) << "op " << op;
    if (op % 10000 == 9999) check_data();
  }
  check_data();
  EXPECT_GT(num_failures, 100);  // the pool was under pressure, so the failure path ran
  for (const auto& [seq, unused] : model) cache.FreeSequence(seq);
  EXPECT_EQ(pool->num_blocks_free(), pool->num_blocks_total());
  EXPECT_TRUE(pool->CheckInvariants().ok());
}

}  // namespace
}  // namespace asl::kv

// PagedKvCache and DenseKvCache: writes read back exactly, failures leave no trace, and paged
// decode attention (CPU kernel and gather path) equals a dense float reference on ragged batches.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/common/cpu_isa.h"
#include "tests/cpu_isa_test_util.h"
#include "engine/kv/block_pool.h"
#include "engine/kv/dense_kv_cache.h"
#include "engine/kv/paged_attention.h"

namespace asl::kv {
namespace {

constexpr int64_t kH = 6, kHkv = 2;
constexpr int kBlockSize = 16;
constexpr int kLayers = 2;
// Every storage dtype the pool and the CPU kernel take.
const std::vector<at::ScalarType> kStorageDtypes = {at::kFloat, at::kBFloat16, at::kHalf};

std::unique_ptr<BlockPool> MakePool(int64_t d, at::ScalarType dtype, int64_t num_blocks = 256,
                                    int block_size = kBlockSize) {
  auto pool = BlockPool::Create(BlockPoolOptions{kLayers, kHkv, d, dtype, at::kCPU, block_size, num_blocks, 0});
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return std::move(pool).value();
}

// softmax(q K^T * scale) V per sequence, in float64 with plain ATen ops. ks[b]: [Hkv, len, d].
at::Tensor Reference(const at::Tensor& q, const std::vector<at::Tensor>& ks, const std::vector<at::Tensor>& vs,
                     double scale) {
  const int64_t H = q.size(1), d = q.size(2);
  std::vector<at::Tensor> rows;
  for (size_t b = 0; b < ks.size(); ++b) {
    if (ks[b].size(1) == 0) {
      rows.push_back(at::zeros({H, d}, at::kDouble));
      continue;
    }
    const int64_t hkv = ks[b].size(0);
    at::Tensor qb = q[static_cast<int64_t>(b)].to(at::kDouble).reshape({hkv, H / hkv, d});
    at::Tensor p = at::softmax(at::matmul(qb, ks[b].to(at::kDouble).transpose(1, 2)) * scale, -1);
    rows.push_back(at::matmul(p, vs[b].to(at::kDouble)).reshape({H, d}));
  }
  return at::stack(rows).to(at::kFloat);
}

// A ragged batch written into a PagedKvCache and a DenseKvCache the same way: per layer a prefill
// Append of about two thirds, then the rest one token at a time through AppendDecode. A filler
// sequence grows between writes so that block tables are scattered through the pool.
struct Batch {
  std::unique_ptr<BlockPool> pool;
  std::unique_ptr<PagedKvCache> paged;
  DenseKvCache dense{kLayers};
  std::vector<SeqId> seqs;
  std::map<std::pair<SeqId, int>, std::pair<at::Tensor, at::Tensor>> written;  // float32 [Hkv, len, d]

  Batch(const std::vector<std::vector<int64_t>>& lengths /* [layer][b] */, int64_t d, at::ScalarType dtype,
        int64_t num_blocks = 256, int block_size = kBlockSize) {
    pool = MakePool(d, dtype, num_blocks, block_size);
    paged = std::make_unique<PagedKvCache>(pool.get());
    const SeqId filler = 1000;
    EXPECT_TRUE(paged->AddSequence(filler).ok());
    const size_t B = lengths[0].size();
    for (size_t b = 0; b < B; ++b) {
      seqs.push_back(static_cast<SeqId>(10 + b));
      EXPECT_TRUE(paged->AddSequence(seqs.back()).ok());
      EXPECT_TRUE(dense.AddSequence(seqs.back()).ok());
    }
    for (int l = 0; l < kLayers; ++l) {
      int64_t max_len = 0;
      for (size_t b = 0; b < B; ++b) {
        const int64_t len = lengths[static_cast<size_t>(l)][b];
        const int64_t prefill = len * 2 / 3;
        max_len = std::max(max_len, len - prefill);
        at::Tensor k = at::randn({kHkv, len, d}), v = at::randn({kHkv, len, d});
        written[{seqs[b], l}] = {k, v};
        EXPECT_TRUE(paged->Append(seqs[b], l, k.narrow(1, 0, prefill), v.narrow(1, 0, prefill)).ok());
        EXPECT_TRUE(dense.Append(seqs[b], l, k.narrow(1, 0, prefill), v.narrow(1, 0, prefill)).ok());
        const int64_t junk = static_cast<int64_t>(b % 3) * 7 + 1;
        EXPECT_TRUE(paged->Append(filler, l, at::randn({kHkv, junk, d}), at::randn({kHkv, junk, d})).ok());
      }
      // Decode steps: every sequence with tokens left takes one per step, batched.
      for (int64_t step = 0; step < max_len; ++step) {
        std::vector<SeqId> ids;
        std::vector<at::Tensor> kr, vr;
        for (size_t b = 0; b < B; ++b) {
          const int64_t len = lengths[static_cast<size_t>(l)][b];
          const int64_t t = len * 2 / 3 + step;
          if (t >= len) continue;
          ids.push_back(seqs[b]);
          kr.push_back(written[{seqs[b], l}].first.select(1, t));
          vr.push_back(written[{seqs[b], l}].second.select(1, t));
        }
        EXPECT_TRUE(paged->AppendDecode(l, ids, at::stack(kr), at::stack(vr)).ok());
        EXPECT_TRUE(dense.AppendDecode(l, ids, at::stack(kr), at::stack(vr)).ok());
      }
    }
    pool->FreeSequence(filler);  // leaves holes; the batch's blocks stay scattered
    EXPECT_TRUE(pool->CheckInvariants().ok());
  }

  // What the pool holds for (seq, layer): the written values rounded to the storage dtype.
  std::pair<at::Tensor, at::Tensor> Stored(size_t b, int layer) const {
    const auto& [k, v] = written.at({seqs[b], layer});
    return {k.to(pool->dtype()).to(at::kFloat), v.to(pool->dtype()).to(at::kFloat)};
  }

  at::Tensor Tables(int layer, at::Tensor* lengths) const {
    size_t max_blocks = 0;
    for (SeqId s : seqs) max_blocks = std::max(max_blocks, pool->block_table(s, layer).size());
    at::Tensor t = at::full({static_cast<int64_t>(seqs.size()), static_cast<int64_t>(max_blocks)}, -1, at::kInt);
    *lengths = at::empty({static_cast<int64_t>(seqs.size())}, at::kLong);
    for (size_t b = 0; b < seqs.size(); ++b) {
      const auto& table = pool->block_table(seqs[b], layer);
      for (size_t j = 0; j < table.size(); ++j) t[static_cast<int64_t>(b)][static_cast<int64_t>(j)] = table[j];
      (*lengths)[static_cast<int64_t>(b)] = pool->Length(seqs[b], layer);
    }
    return t;
  }
};

// Ragged lengths around the block size, including 0 and a few hundred; layer 1 differs from layer 0.
const std::vector<std::vector<int64_t>> kLengths = {{0, 1, 15, 16, 17, 300, 5, 33},
                                                    {17, 0, 300, 1, 16, 15, 64, 2}};

TEST(KvCacheTest, AppendReadsBackWhatWasWritten) {
  for (at::ScalarType dtype : kStorageDtypes) {
    at::manual_seed(1);
    Batch batch(kLengths, /*d=*/8, dtype);
    for (int l = 0; l < kLayers; ++l) {
      for (size_t b = 0; b < batch.seqs.size(); ++b) {
        const int64_t len = kLengths[static_cast<size_t>(l)][b];
        EXPECT_EQ(batch.paged->Length(batch.seqs[b], l), len);
        EXPECT_EQ(batch.dense.Length(batch.seqs[b], l), len);
        EXPECT_EQ(static_cast<int64_t>(batch.pool->block_table(batch.seqs[b], l).size()), (len + kBlockSize - 1) / kBlockSize);
        auto [k, v] = batch.pool->Gather(batch.seqs[b], l);
        auto [ek, ev] = batch.Stored(b, l);
        EXPECT_EQ(k.scalar_type(), dtype);
        EXPECT_TRUE(at::equal(k.to(at::kFloat), ek)) << "b " << b << " layer " << l;
        EXPECT_TRUE(at::equal(v.to(at::kFloat), ev)) << "b " << b << " layer " << l;
        if (len > 0) {
          auto [dk, dv] = batch.dense.Gather(batch.seqs[b], l);
          EXPECT_TRUE(at::equal(dk, batch.written.at({batch.seqs[b], l}).first));
        }
      }
    }
  }
}

TEST(KvCacheTest, FailedAppendsLeaveNoTrace) {
  auto pool = MakePool(/*d=*/4, at::kFloat, /*num_blocks=*/4, /*block_size=*/4);
  PagedKvCache cache(pool.get());
  ASSERT_TRUE(cache.AddSequence(1).ok());
  ASSERT_TRUE(cache.AddSequence(2).ok());
  at::Tensor k = at::randn({kHkv, 7, 4}), v = at::randn({kHkv, 7, 4});
  ASSERT_TRUE(cache.Append(1, 0, k, v).ok());  // blocks 0, 1
  ASSERT_TRUE(cache.Append(2, 0, k.narrow(1, 0, 4), v.narrow(1, 0, 4)).ok());  // block 2, full
  ASSERT_TRUE(cache.Append(2, 1, k.narrow(1, 0, 4), v.narrow(1, 0, 4)).ok());  // block 3, full
  auto before = pool->Gather(1, 0);

  EXPECT_EQ(cache.Append(1, 1, at::randn({kHkv, 5, 4}), at::randn({kHkv, 5, 4})).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.Length(1, 1), 0);
  // Seq 1 fits its 8th token in block 1, seq 2 needs a fifth block: the whole batch fails.
  EXPECT_EQ(cache.AppendDecode(0, {1, 2}, at::randn({2, kHkv, 4}), at::randn({2, kHkv, 4})).code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.Length(1, 0), 7);
  EXPECT_EQ(cache.Length(2, 0), 4);
  // Bad input is rejected before anything moves.
  EXPECT_EQ(cache.Append(1, 0, at::randn({kHkv + 1, 1, 4}), at::randn({kHkv + 1, 1, 4})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Append(1, 0, at::randn({kHkv, 1, 4}), at::randn({kHkv, 2, 4})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Append(1, 5, k, v).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Append(9, 0, k, v).code(), StatusCode::kNotFound);
  EXPECT_EQ(cache.AppendDecode(0, {1}, at::randn({2, kHkv, 4}), at::randn({2, kHkv, 4})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.AppendDecode(0, {1, 1}, at::randn({2, kHkv, 4}), at::randn({2, kHkv, 4})).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Length(1, 0), 7);
  EXPECT_EQ(pool->num_blocks_free(), 0);
  EXPECT_EQ(pool->block_table(1, 0), (std::vector<BlockId>{0, 1}));
  EXPECT_TRUE(at::equal(pool->Gather(1, 0).first, before.first));
  EXPECT_TRUE(pool->CheckInvariants().ok());

  // The one token that fits goes in; freeing returns the whole pool.
  ASSERT_TRUE(cache.AppendDecode(0, {1}, at::ones({1, kHkv, 4}), at::ones({1, kHkv, 4})).ok());
  EXPECT_TRUE(at::equal(pool->Gather(1, 0).first.select(1, 7), at::ones({kHkv, 4})));
  cache.FreeSequence(1);
  cache.FreeSequence(2);
  EXPECT_EQ(pool->num_blocks_free(), 4);
  EXPECT_TRUE(pool->CheckInvariants().ok());
}

// Every instruction set the attention kernel is built for.
template <typename F>
void ForEachCpuIsa(F fn) {
  testing::ForEachCpuIsa({CpuIsa::kAvx512, CpuIsa::kAvx2, CpuIsa::kBaseline}, fn);
}

// Paged attention vs the float64 reference, both paths (kernel at every ISA, gather), every layer.
void ExpectAttentionMatches(at::ScalarType storage, at::ScalarType q_dtype, int64_t d, double atol,
                            const std::vector<std::vector<int64_t>>& lengths = kLengths, int64_t num_blocks = 256,
                            int block_size = kBlockSize) {
  at::manual_seed(7);
  Batch batch(lengths, d, storage, num_blocks, block_size);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  for (int l = 0; l < kLayers; ++l) {
    at::Tensor q = at::randn({static_cast<int64_t>(batch.seqs.size()), kH, d}).to(q_dtype);
    std::vector<at::Tensor> ks, vs;
    for (size_t b = 0; b < batch.seqs.size(); ++b) {
      // Against the values the pool holds when q is float (tight), else the unrounded ones.
      auto kv = q_dtype == at::kFloat ? batch.Stored(b, l) : batch.written.at({batch.seqs[b], l});
      ks.push_back(kv.first);
      vs.push_back(kv.second);
    }
    const at::Tensor ref = Reference(q, ks, vs, scale);
    ForEachCpuIsa([&] {
      const at::Tensor out = batch.paged->Attend(l, batch.seqs, q, scale);
      ASSERT_EQ(out.sizes(), q.sizes());
      EXPECT_EQ(out.scalar_type(), q_dtype);
      EXPECT_TRUE(at::allclose(out.to(at::kFloat), ref, /*rtol=*/atol, atol))
          << "layer " << l << " max err " << (out.to(at::kFloat) - ref).abs().max().item<float>();
      for (size_t b = 0; b < batch.seqs.size(); ++b) {
        if (lengths[static_cast<size_t>(l)][b] == 0) {
          EXPECT_TRUE(at::equal(out[static_cast<int64_t>(b)], at::zeros_like(out[0]))) << "b " << b;
        }
      }
    });

    at::Tensor lens;
    const at::Tensor tables = batch.Tables(l, &lens);  // padding entries are -1 on purpose
    const at::Tensor gathered = PagedDecodeAttentionGather(q, batch.pool->k_cache(), batch.pool->v_cache(), tables,
                                                           lens, scale);
    EXPECT_TRUE(at::allclose(gathered.to(at::kFloat), ref, atol, atol))
        << "gather path, layer " << l << " max err " << (gathered.to(at::kFloat) - ref).abs().max().item<float>();
  }
}

TEST(PagedAttentionTest, Float32MatchesReference) { ExpectAttentionMatches(at::kFloat, at::kFloat, 64, 1e-5); }
TEST(PagedAttentionTest, Float32OddHeadDimMatchesReference) { ExpectAttentionMatches(at::kFloat, at::kFloat, 40, 1e-5); }
TEST(PagedAttentionTest, BFloat16StorageMatchesReference) { ExpectAttentionMatches(at::kBFloat16, at::kFloat, 64, 1e-5); }
TEST(PagedAttentionTest, Float16StorageMatchesReference) { ExpectAttentionMatches(at::kHalf, at::kFloat, 64, 1e-5); }
TEST(PagedAttentionTest, Float16OddHeadDimMatchesReference) { ExpectAttentionMatches(at::kHalf, at::kFloat, 72, 1e-5); }
TEST(PagedAttentionTest, BFloat16EndToEndWithinBf16Tolerance) {
  ExpectAttentionMatches(at::kBFloat16, at::kBFloat16, 64, 3e-2);
}
TEST(PagedAttentionTest, Float16EndToEndWithinFp16Tolerance) { ExpectAttentionMatches(at::kHalf, at::kHalf, 64, 4e-3); }

// Long sequences span many partitions of the CPU kernel (256 tokens each): lengths on and around
// partition edges, and block sizes whose partitions hold one block, many, or a partial one.
TEST(PagedAttentionTest, LongSequencesAcrossPartitionsMatchReference) {
  const std::vector<std::vector<int64_t>> lengths = {{256, 257, 1000, 3, 1300}, {511, 512, 1, 0, 800}};
  for (at::ScalarType storage : kStorageDtypes) {
    for (int block_size : {16, 1, 100, 1024}) {
      if (storage != at::kFloat && block_size != 16) continue;  // block sizes: the plan, not the dtype
      SCOPED_TRACE(std::string(c10::toString(storage)) + " block_size " + std::to_string(block_size));
      ExpectAttentionMatches(storage, at::kFloat, 64, 1e-5, lengths, 12000 / block_size + 64, block_size);
    }
  }
}

// A sequence's row is the same float computation whatever its batch-mates, their order and the
// number of threads: bitwise equal (decode stays batch-invariant with every storage dtype and ISA).
TEST(PagedAttentionTest, RowsDoNotDependOnBatchOrThreads) {
  const int threads = at::get_num_threads();
  for (at::ScalarType storage : kStorageDtypes) {
    at::manual_seed(11);
    Batch batch(kLengths, /*d=*/64, storage);
    const at::Tensor q = at::randn({static_cast<int64_t>(batch.seqs.size()), kH, 64});
    ForEachCpuIsa([&] {
      for (int l = 0; l < kLayers; ++l) {
        at::set_num_threads(threads);
        const at::Tensor all = batch.paged->Attend(l, batch.seqs, q, 0.125);
        for (int t : {1, 3}) {
          at::set_num_threads(t);
          for (size_t b = 0; b < batch.seqs.size(); ++b) {
            const at::Tensor alone = batch.paged->Attend(l, {batch.seqs[b]}, q.narrow(0, static_cast<int64_t>(b), 1), 0.125);
            EXPECT_TRUE(at::equal(alone[0], all[static_cast<int64_t>(b)]))
                << c10::toString(storage) << " layer " << l << " b " << b << " threads " << t;
          }
          // Reversed order.
          std::vector<SeqId> rev(batch.seqs.rbegin(), batch.seqs.rend());
          const at::Tensor back = batch.paged->Attend(l, rev, q.flip({0}), 0.125);
          EXPECT_TRUE(at::equal(back.flip({0}), all)) << c10::toString(storage) << " layer " << l;
        }
      }
    });
  }
  at::set_num_threads(threads);
}

TEST(PagedAttentionTest, PagedAndDenseCachesAgree) {
  for (at::ScalarType dtype : kStorageDtypes) {
    at::manual_seed(3);
    Batch batch(kLengths, /*d=*/32, dtype);
    for (int l = 0; l < kLayers; ++l) {
      at::Tensor q = at::randn({static_cast<int64_t>(batch.seqs.size()), kH, 32});
      at::Tensor paged = batch.paged->Attend(l, batch.seqs, q, 0.125);
      at::Tensor dense = batch.dense.Attend(l, batch.seqs, q, 0.125);
      // The dense cache keeps the float32 it was given; compare at the storage's precision.
      const double tol = dtype == at::kFloat ? 1e-5 : dtype == at::kHalf ? 4e-3 : 3e-2;
      EXPECT_TRUE(at::allclose(paged, dense, tol, tol)) << "layer " << l;
    }
    // A sub-batch in another order gives the same rows.
    std::vector<SeqId> sub = {batch.seqs[5], batch.seqs[0], batch.seqs[2]};
    at::Tensor q = at::randn({3, kH, 32});
    const double tol = dtype == at::kFloat ? 1e-5 : dtype == at::kHalf ? 4e-3 : 3e-2;
    EXPECT_TRUE(at::allclose(batch.paged->Attend(1, sub, q, 0.125), batch.dense.Attend(1, sub, q, 0.125), tol, tol));
  }
}

TEST(PagedAttentionTest, EmptySequencesGiveZerosAndBadInputThrows) {
  auto pool = MakePool(/*d=*/16, at::kFloat);
  PagedKvCache cache(pool.get());
  ASSERT_TRUE(cache.AddSequence(1).ok());
  ASSERT_TRUE(cache.AddSequence(2).ok());
  at::Tensor q = at::randn({2, kH, 16});
  EXPECT_TRUE(at::equal(cache.Attend(0, {1, 2}, q, 0.25), at::zeros({2, kH, 16})));
  at::Tensor tables = at::zeros({2, 0}, at::kInt), lengths = at::zeros({2}, at::kLong);
  EXPECT_TRUE(at::equal(PagedDecodeAttentionGather(q, pool->k_cache(), pool->v_cache(), tables, lengths, 0.25),
                        at::zeros({2, kH, 16})));
  EXPECT_THROW(cache.Attend(0, {1, 3}, q, 0.25), c10::Error);
  EXPECT_THROW(cache.Attend(2, {1, 2}, q, 0.25), c10::Error);
  EXPECT_THROW(cache.Attend(0, {1}, q, 0.25), c10::Error);
  at::Tensor bad = at::full({2, 1}, 999, at::kInt), one = at::ones({2}, at::kLong);
  EXPECT_THROW(PagedDecodeAttention(q, pool->k_cache(), pool->v_cache(), bad, one, 0.25), c10::Error);
  EXPECT_THROW(PagedDecodeAttention(at::randn({2, 5, 16}), pool->k_cache(), pool->v_cache(), tables, lengths, 0.25),
               c10::Error);
  DenseKvCache dense(kLayers);
  EXPECT_THROW(dense.Attend(0, {1}, at::randn({1, kH, 16}), 0.25), c10::Error);
}

}  // namespace
}  // namespace asl::kv

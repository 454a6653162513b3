// Pruning maths on crafted scores and small random tensors (asl-method.md §1-§7). The scheduler's
// and the block accounting's decisions are in scheduler_tests.cpp.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "engine/prune/policy.h"
#include "engine/prune/scoring.h"
#include "engine/sched/block_accounting.h"

namespace asl {
namespace {

std::vector<int64_t> ToVec(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

TEST(Ranks, DescendingWithTiesByLowerIndex) {
  at::Tensor s = at::tensor({3.f, 1.f, 3.f, 2.f, 1.f});
  EXPECT_EQ(ToVec(prune::DescendingOrder(s)), (std::vector<int64_t>{0, 2, 3, 1, 4}));
  EXPECT_EQ(ToVec(prune::Ranks(s)), (std::vector<int64_t>{1, 4, 2, 3, 5}));
}

TEST(Ranks, AllEqualIsIdentity) {
  at::Tensor s = at::zeros({1000});
  EXPECT_EQ(ToVec(prune::Ranks(s)), ToVec(at::arange(1, 1001)));
}

TEST(KeptSet, TopKPlusWindowSorted) {
  at::Tensor s = at::tensor({0.1f, 0.9f, 0.5f, 0.7f});  // N = 4 scored tokens
  at::Tensor kept = prune::KeptSet(prune::DescendingOrder(s), /*k=*/2, /*N=*/4, /*W=*/3);
  EXPECT_EQ(ToVec(kept), (std::vector<int64_t>{1, 3, 4, 5, 6}));
}

TEST(RankVariance, HandComputed) {
  prune::RankVarianceTest t(2);
  t.Push(at::tensor({1.f, 2.f, 3.f, 4.f}));
  EXPECT_FALSE(t.full());
  t.Push(at::tensor({2.f, 1.f, 4.f, 3.f}));
  // k = 2: union of {0,1} and {1,0}; variances 0.25 and 0.25.
  EXPECT_DOUBLE_EQ(t.MeanRankVariance(2), 0.25);
  // k = 3: union {0,1,2} ∪ {1,0,3} = all; variances .25 .25 .25 .25.
  EXPECT_DOUBLE_EQ(t.MeanRankVariance(3), 0.25);
  t.Push(at::tensor({4.f, 3.f, 2.f, 1.f}));  // ring now holds layers 2 and 3
  // k = 1: union {1} ∪ {3}: token1 ranks (1,3) var 1; token3 ranks (3,1) var 1.
  EXPECT_DOUBLE_EQ(t.MeanRankVariance(1), 1.0);
}

// Independent, loop-based implementation of §2 for one sequence.
at::Tensor NaivePooled(const at::Tensor& q, const at::Tensor& k, int W, int S, double scale) {
  const int64_t n = q.size(0), H = q.size(1), Hkv = k.size(1), G = H / Hkv, N = n - W;
  at::Tensor u = at::zeros({H, N}, at::kDouble);
  auto qa = q.to(at::kDouble), ka = k.to(at::kDouble);
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t r = 0; r < W; ++r) {
      std::vector<double> z(n);
      double mx = -1e300;
      for (int64_t j = 0; j < n; ++j) {
        if (j >= N && j - N > r) { z[j] = -INFINITY; continue; }
        z[j] = (qa[N + r][h] * ka[j][h / G]).sum().item<double>() * scale;
        mx = std::max(mx, z[j]);
      }
      double den = 0;
      for (int64_t j = 0; j < n; ++j) den += std::isinf(z[j]) ? 0 : std::exp(z[j] - mx);
      for (int64_t j = 0; j < N; ++j) u[h][j] += std::exp(z[j] - mx) / den;
    }
  }
  at::Tensor p = at::zeros({H, N}, at::kDouble);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t o = -S / 2; o <= S / 2; ++o)
        if (j + o >= 0 && j + o < N) acc += u[h][j + o].item<double>();
      p[h][j] = acc / S;
    }
  return p;
}

TEST(PooledWindowScores, MatchesNaiveImplementation) {
  at::manual_seed(7);
  const int W = 4, S = 3;
  at::Tensor q = at::randn({23, 6, 8}), k = at::randn({23, 2, 8});
  at::Tensor got = prune::PooledWindowScores(q, k, W, S, Pooling::kAvg, 1.0 / std::sqrt(8.0));
  at::Tensor want = NaivePooled(q, k, W, S, 1.0 / std::sqrt(8.0));
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(at::allclose(got.to(at::kDouble), want, 1e-5, 1e-6));
  // Chunking over heads gives the same result.
  at::Tensor chunked = prune::PooledWindowScores(q, k, W, S, Pooling::kAvg, 1.0 / std::sqrt(8.0), /*max_chunk_bytes=*/1);
  EXPECT_TRUE(at::equal(got, chunked));
}

TEST(SnapKvKeep, BudgetExactPerHeadWithWindow) {
  // Hkv = 2, N = 6 scored tokens, window 2 -> q = 8, budget 5 -> 3 top per head + 2 window.
  at::Tensor sg = at::tensor({0.f, 5.f, 1.f, 4.f, 3.f, 2.f, 9.f, 8.f, 7.f, 0.f, 0.f, 1.f}).view({2, 6});
  at::Tensor keep = prune::SnapKvKeep(sg, 5, 2);
  ASSERT_EQ(keep.sizes(), (at::IntArrayRef{2, 5}));
  EXPECT_EQ(ToVec(keep[0]), (std::vector<int64_t>{1, 3, 4, 6, 7}));
  EXPECT_EQ(ToVec(keep[1]), (std::vector<int64_t>{0, 1, 2, 6, 7}));
}

PruningParams AslParams(double tau) {
  PruningParams p;
  p.policy = PolicyKind::kAsl;
  p.window = 2;
  p.kernel = 1;
  p.min_layer = 3;
  p.obs_layers = 2;
  p.tau = tau;
  p.select_k = 5;
  p.kv_budget = 0;
  EXPECT_TRUE(ResolvePruningParams(&p, 8).ok());
  return p;
}

// Pooled scores whose token ranks are the same at every layer.
at::Tensor StablePooled(int64_t H, int64_t N) { return at::arange(N, 0, -1, at::kFloat).repeat({H, 1}); }

TEST(AslPolicy, NoSelectionAtMinLayerThenSelectsWhenStable) {
  const int64_t n = 12, W = 2, N = n - W;
  prune::PruningPolicy policy(AslParams(0.3), 8, /*Hkv=*/1, n);
  for (int layer = 0; layer < 8; ++layer) {
    prune::ScoreNeeds needs = policy.Needs(layer, n);
    EXPECT_EQ(needs.window_scores, layer >= 2) << layer;  // from L_min - L_obs + 1
    prune::LayerPlan plan = policy.OnLayer(layer, n, needs.window_scores ? StablePooled(2, N) : at::Tensor(), {});
    if (layer <= 3) {
      EXPECT_FALSE(plan.select.defined()) << "no selection at or before min_layer";
    } else {
      // v0 == 0 at L_min: the ratio counts as 0 at L_min + 1, the earliest possible layer.
      ASSERT_TRUE(plan.select.defined());
      EXPECT_EQ(layer, 4);
      // k = select_k - W = 3 best tokens (0, 1, 2) plus window (10, 11): size min(select_k, q).
      EXPECT_EQ(ToVec(plan.select), (std::vector<int64_t>{0, 1, 2, 10, 11}));
      break;
    }
  }
  EXPECT_EQ(policy.report().selection_layer, 4);
  EXPECT_EQ(policy.report().outcome, SelectionOutcome::kSelected);
  EXPECT_EQ(policy.report().num_propagated_tokens, 5);
}

TEST(AslPolicy, RatioAgainstFirstEvaluatedLayer) {
  const int64_t n = 6, W = 2;
  PruningParams p = AslParams(0.5);
  p.select_k = 3;  // k = 1
  prune::PruningPolicy policy(p, 8, 1, n);
  // Ranks per layer (N = 4) chosen so v(L_min=3) = 1.0 and v(4) = 0.25, v(5) = 0.
  std::vector<std::vector<float>> scores = {
      {0, 0, 0, 0}, {0, 0, 0, 0}, {4, 3, 2, 1}, {2, 4, 3, 1}, {4, 3, 2, 1}, {4, 3, 2, 1}};
  std::vector<double> ratios;
  for (int layer = 2; layer < 6; ++layer) {
    at::Tensor pooled = at::tensor(scores[layer]).unsqueeze(0);
    prune::LayerPlan plan = policy.OnLayer(layer, n, pooled, {});
    if (plan.select.defined()) {
      EXPECT_EQ(layer, 5);
      EXPECT_EQ(ToVec(plan.select), (std::vector<int64_t>{0, 4, 5}));
    }
  }
  // L_min=3: ring {layer2: ranks 1,2,3,4; layer3: ranks 3,1,2,4}; k=1: union {0,1}:
  // var(1,3)=1, var(2,1)=0.25 -> v0=0.625. Layer 4: ring {3,4}: union {1,0}: var(3,1)=1,
  // var(1,2)=.25 -> 0.625 -> ratio 1. Layer 5: ring {4,5} equal ranks -> 0 -> select.
  ASSERT_EQ(policy.report().variance_ratios.size(), 3u);
  EXPECT_DOUBLE_EQ(policy.report().variance_ratios[0], 1.0);
  EXPECT_DOUBLE_EQ(policy.report().variance_ratios[1], 1.0);
  EXPECT_DOUBLE_EQ(policy.report().variance_ratios[2], 0.0);
  (void)W;
}

TEST(AslPolicy, ForcedAtMaxLayerWhenTauNeverReached) {
  const int64_t n = 12;
  PruningParams p = AslParams(1e-12);
  p.max_layer = 6;
  prune::PruningPolicy policy(p, 8, 1, n);
  at::manual_seed(3);
  for (int layer = 0; layer < 8; ++layer) {
    at::Tensor pooled = policy.Needs(layer, n).window_scores ? at::rand({1, n - 2}) : at::Tensor();
    prune::LayerPlan plan = policy.OnLayer(layer, n, pooled, {});
    if (plan.select.defined()) {
      EXPECT_EQ(layer, 6);
      break;
    }
  }
  EXPECT_EQ(policy.report().outcome, SelectionOutcome::kForced);
}

TEST(AslPolicy, ShortPromptNeverScoredWithoutBudget) {
  PruningParams p = AslParams(0.3);
  prune::PruningPolicy policy(p, 8, 1, /*n=*/5);  // n <= select_k
  for (int layer = 0; layer < 8; ++layer) EXPECT_FALSE(policy.Needs(layer, 5).window_scores);
}

TEST(PruningParams, RejectsEachInvalidKnobByName) {
  struct Case { std::function<void(PruningParams&)> mutate; std::string name; };
  std::vector<Case> cases = {
      {[](PruningParams& p) { p.window = 0; }, "pruning.window"},
      {[](PruningParams& p) { p.kernel = 4; }, "pruning.kernel"},
      {[](PruningParams& p) { p.tau = 0; }, "pruning.tau"},
      {[](PruningParams& p) { p.tau = -1; }, "pruning.tau"},
      {[](PruningParams& p) { p.select_k = 32; }, "pruning.select_k"},
      {[](PruningParams& p) { p.kv_budget = 16; }, "pruning.kv_budget"},
      {[](PruningParams& p) { p.min_layer = 32; }, "pruning.min_layer"},
      {[](PruningParams& p) { p.min_layer = 3; }, "pruning.min_layer"},  // < obs_layers - 1
      {[](PruningParams& p) { p.max_layer = 40; }, "pruning.max_layer"},
  };
  for (const Case& c : cases) {
    PruningParams p;
    c.mutate(p);
    Status st = ResolvePruningParams(&p, 32);
    ASSERT_FALSE(st.ok()) << c.name;
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find(c.name), std::string::npos) << st.message();
  }
  PruningParams ok;
  EXPECT_TRUE(ResolvePruningParams(&ok, 32).ok());
  EXPECT_EQ(ok.min_layer, 10);
  PruningParams small;
  EXPECT_TRUE(ResolvePruningParams(&small, 30).ok());
  EXPECT_EQ(small.min_layer, 9);  // round(30 * 10 / 32)
}

TEST(KvUpperBound, PerPolicy) {
  PruningParams p;
  p.select_k = 64;
  p.kv_budget = 48;
  p.window = 8;
  p.obs_layers = 1;
  p.policy = PolicyKind::kFull;
  ASSERT_TRUE(ResolvePruningParams(&p, 4).ok());
  const sched::BlockAccounting blocks(/*num_layers=*/4, /*block_size=*/16, /*pool=*/nullptr);
  auto prompt_blocks = [&](int64_t n) { return blocks.Bounds(prune::KvTokensUpperBounds(p, 4, n), 0).prompt; };
  EXPECT_EQ(prompt_blocks(100), 4 * 7);
  p.policy = PolicyKind::kSnapKv;
  EXPECT_EQ(prompt_blocks(100), 4 * 3);
  p.policy = PolicyKind::kGemFilter;
  EXPECT_EQ(prompt_blocks(100), 4 * 4);
  EXPECT_EQ(prompt_blocks(10), 4 * 1);
}

}  // namespace
}  // namespace asl

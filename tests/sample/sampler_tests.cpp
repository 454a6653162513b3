// Sampler behaviour on crafted distributions. Every random test uses fixed seeds, so its outcome
// is deterministic: the frequency bounds are loose enough for any correct sampler yet can never
// flake, because the same seed yields the same draws on every run.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>

#include "engine/sample/sampler.h"

namespace asl::sample {
namespace {

at::Tensor Row(const std::vector<float>& v) { return at::tensor(v, at::kFloat).unsqueeze(0); }

at::Tensor LogOf(const std::vector<float>& probs) { return Row(probs).log(); }

SamplingParams Params(double temperature, uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

TokenId SampleOne(SamplerState& s, const at::Tensor& logits) {
  std::vector<SamplerState*> states{&s};
  return Sample(logits, states)[0].token_id;
}

// Token counts of n draws (no Observe, so no penalty changes between draws).
std::vector<int> Counts(const SamplingParams& p, const at::Tensor& logits, int n) {
  SamplerState s(p, {});
  std::vector<int> counts(logits.size(1), 0);
  for (int i = 0; i < n; ++i) ++counts[SampleOne(s, logits)];
  return counts;
}

std::vector<float> RandomLogits(int64_t v, uint64_t seed, float scale = 3.f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> out(v);
  for (float& x : out) x = nd(g);
  return out;
}

TEST(Greedy, PicksArgmaxWithTiesToLowestId) {
  SamplerState a(Params(0.0, 1), {}), b(Params(0.0, 2), {});
  std::vector<SamplerState*> states{&a, &b};
  at::Tensor logits = at::tensor({1.f, 3.f, 3.f, 2.f, -1.f, -5.f, 0.f, 4.f}, at::kFloat).view({2, 4});
  std::vector<SampleResult> r = Sample(logits, states);
  EXPECT_EQ(r[0].token_id, 1);
  EXPECT_EQ(r[1].token_id, 3);
}

TEST(Greedy, TopK1EqualsGreedy) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::vector<float> row = RandomLogits(1000, seed);
    const auto argmax = static_cast<TokenId>(std::max_element(row.begin(), row.end()) - row.begin());
    SamplingParams p = Params(1.5, seed);
    p.top_k = 1;
    SamplerState s(p, {});
    for (int i = 0; i < 10; ++i) EXPECT_EQ(SampleOne(s, Row(row)), argmax);
  }
}

// One request's 200 draws, alone or at row 5 of a batch of 8 with other seeds, settings and
// logits, with penalties that evolve with its own output.
TEST(Seeded, ReproducibleAndIndependentOfBatch) {
  constexpr int64_t kV = 2048;
  constexpr int kSteps = 200;
  SamplingParams target = Params(0.9, 1234);
  target.top_p = 0.95;
  target.top_k = 100;
  target.repetition_penalty = 1.1;
  target.presence_penalty = 0.2;
  const std::vector<TokenId> prompt{5, 6, 7};
  auto step_logits = [](int request, int step) { return RandomLogits(kV, request * 100003ull + step, 2.f); };

  auto run_alone = [&](const SamplingParams& p) {
    SamplerState s(p, prompt);
    std::vector<TokenId> out;
    for (int t = 0; t < kSteps; ++t) {
      const TokenId tok = SampleOne(s, Row(step_logits(0, t)));
      EXPECT_TRUE(s.Observe(tok));
      out.push_back(tok);
    }
    return out;
  };
  const std::vector<TokenId> alone = run_alone(target);
  EXPECT_EQ(run_alone(target), alone);

  std::vector<std::unique_ptr<SamplerState>> owned;
  std::vector<SamplerState*> states;
  constexpr int kTargetRow = 5;
  for (int r = 0; r < 8; ++r) {
    SamplingParams p = Params(0.5 + 0.1 * r, 77 + r);
    if (r == 2) p.temperature = 0.0;
    if (r == 3) p.seed.reset();
    if (r == 4) p.min_p = 0.05;
    owned.push_back(std::make_unique<SamplerState>(r == kTargetRow ? target : p, r == kTargetRow ? prompt : std::vector<TokenId>{}));
    states.push_back(owned.back().get());
  }
  std::vector<TokenId> batched;
  for (int t = 0; t < kSteps; ++t) {
    std::vector<at::Tensor> rows;
    for (int r = 0; r < 8; ++r) rows.push_back(at::tensor(step_logits(r == kTargetRow ? 0 : r + 1, t), at::kFloat));
    std::vector<SampleResult> res = Sample(at::stack(rows), states);
    for (int r = 0; r < 8; ++r) EXPECT_TRUE(states[r]->Observe(res[r].token_id));
    batched.push_back(res[kTargetRow].token_id);
  }
  EXPECT_EQ(batched, alone);

  SamplingParams other = target;
  other.seed = 4321;
  EXPECT_NE(run_alone(other), alone);
}

TEST(Seeded, UnseededRequestsGetDistinctSeeds) {
  SamplingParams p;
  p.temperature = 1.0;
  SamplerState a(p, {}), b(p, {});
  EXPECT_NE(a.seed(), b.seed());
  p.seed = 99;
  EXPECT_EQ(SamplerState(p, {}).seed(), 99u);
}

// Probabilities at permuted ids: the nucleus is found in sorted order, not id order.
TEST(TopP, KeepsExactlyTheSmallestNucleus) {
  const at::Tensor logits = LogOf({0.3f, 0.1f, 0.2f, 0.4f});  // sorted: 3 (.4), 0 (.3), 2 (.2), 1 (.1)
  SamplingParams p = Params(1.0, 7);
  p.top_p = 0.65;  // .4 < .65 <= .7
  std::vector<int> c = Counts(p, logits, 4000);
  EXPECT_EQ(c[1], 0);
  EXPECT_EQ(c[2], 0);
  EXPECT_GT(c[0], 0);
  EXPECT_GT(c[3], 0);
  // Renormalised inside the nucleus: 0.4/0.7 = 0.571.
  EXPECT_NEAR(c[3] / 4000.0, 0.4 / 0.7, 0.03);

  p.top_p = 0.75;  // .7 < .75 <= .9
  c = Counts(p, logits, 4000);
  EXPECT_EQ(c[1], 0);
  EXPECT_GT(c[2], 0);

  p.top_p = 0.35;  // the top token alone
  c = Counts(p, logits, 500);
  EXPECT_EQ(c[3], 500);
}

TEST(TopP, TiesKeepTheLowestIds) {
  SamplingParams p = Params(1.0, 11);
  p.top_p = 0.5;  // uniform over 1000: exactly 500 tokens reach half the mass
  std::vector<int> c = Counts(p, at::zeros({1, 1000}), 5000);
  for (int i = 500; i < 1000; ++i) ASSERT_EQ(c[i], 0) << "token " << i;
  EXPECT_GT(std::accumulate(c.begin() + 400, c.begin() + 500, 0), 0);
}

TEST(TopP, LargeVocabulary) {
  std::vector<float> row(131072, -10.f);
  row[100] = 10.f;   // masses: e^10 = 22026, e^9 = 8103, e^8 = 2981, rest 131069 e^-10 = 5.95
  row[5000] = 9.f;
  row[90000] = 8.f;
  SamplingParams p = Params(1.0, 5);
  p.top_p = 0.9;     // 0.665 < 0.9 <= 0.910
  std::vector<int> c = Counts(p, Row(row), 1000);
  EXPECT_EQ(c[100] + c[5000], 1000);
  EXPECT_GT(c[5000], 0);
  p.top_p = 0.5;
  c = Counts(p, Row(row), 200);
  EXPECT_EQ(c[100], 200);

  // A heavy flat tail (131069 e^-2 = 17738 of 50848): top_p = 0.9 needs 12653 of it, i.e. the
  // 93497 lowest-id tail tokens (ids up to 93498; ties keep the lowest ids), 27.6% of the nucleus.
  std::fill(row.begin(), row.end(), -2.f);
  row[100] = 10.f;
  row[5000] = 9.f;
  row[90000] = 8.f;
  p = Params(1.0, 6);
  p.top_p = 0.9;
  c = Counts(p, Row(row), 200);
  int tail = 0, max_tail_id = -1;
  for (int i = 0; i < 131072; ++i) {
    if (i == 100 || i == 5000 || i == 90000 || c[i] == 0) continue;
    tail += c[i];
    max_tail_id = i;
  }
  EXPECT_GT(tail, 20);
  EXPECT_GT(max_tail_id, 50000);
  EXPECT_LT(max_tail_id, 93500);
  EXPECT_GT(c[90000], 0);
}

TEST(TopK, KeepsTheKMostLikely) {
  std::vector<float> row = RandomLogits(1000, 3);
  std::vector<int> order(1000);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
  SamplingParams p = Params(3.0, 8);  // hot, so every kept token shows up
  p.top_k = 5;
  std::vector<int> c = Counts(p, Row(row), 5000);
  int in_top = 0;
  for (int j = 0; j < 5; ++j) {
    EXPECT_GT(c[order[j]], 0) << "rank " << j;
    in_top += c[order[j]];
  }
  EXPECT_EQ(in_top, 5000);
}

TEST(MinP, KeepsTokensAboveTheScaledMaximum) {
  const at::Tensor logits = LogOf({0.5f, 0.3f, 0.15f, 0.05f});
  SamplingParams p = Params(1.0, 21);
  p.min_p = 0.2;  // threshold 0.1
  std::vector<int> c = Counts(p, logits, 4000);
  EXPECT_EQ(c[3], 0);
  EXPECT_GT(c[2], 0);
  p.min_p = 0.5;  // threshold 0.25
  c = Counts(p, logits, 4000);
  EXPECT_EQ(c[2] + c[3], 0);
  EXPECT_GT(c[1], 0);
}

// HF order: top-k, then top-p over the renormalised top-k set, then min-p.
TEST(Filters, AppliedInHfOrder) {
  const at::Tensor logits = LogOf({0.4f, 0.3f, 0.2f, 0.1f});
  SamplingParams p = Params(1.0, 3);
  p.top_p = 0.5;
  std::vector<int> c = Counts(p, logits, 2000);  // alone: .4 < .5 -> {0, 1}
  EXPECT_GT(c[1], 0);
  EXPECT_EQ(c[2] + c[3], 0);
  p.top_k = 2;  // {0, 1} renormalised: .571 >= .5 -> {0}
  c = Counts(p, logits, 500);
  EXPECT_EQ(c[0], 500);

  p.top_k = 3;
  p.top_p = 0.9;  // over {.4,.3,.2}/.9: needs all three
  p.min_p = 0.6;  // .24 cut: {0, 1}
  c = Counts(p, logits, 2000);
  EXPECT_GT(c[1], 0);
  EXPECT_EQ(c[2] + c[3], 0);
  p.min_p = 0.0;
  c = Counts(p, logits, 2000);
  EXPECT_GT(c[2], 0);
  EXPECT_EQ(c[3], 0);
}

TEST(Temperature, FrequenciesFollowTheScaledDistribution) {
  const std::vector<double> probs{0.5, 0.25, 0.15, 0.1};
  const at::Tensor logits = LogOf({0.5f, 0.25f, 0.15f, 0.1f});
  constexpr int kN = 20000;  // sd of a frequency <= 0.0036; the bound is > 4 sd
  for (double t : {1.0, 0.5, 2.0}) {
    std::vector<double> want(4);
    double z = 0;
    for (int i = 0; i < 4; ++i) z += want[i] = std::pow(probs[i], 1.0 / t);
    std::vector<int> c = Counts(Params(t, 2024), logits, kN);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(c[i] / double(kN), want[i] / z, 0.015) << "T=" << t << " token " << i;
  }
}

TEST(Penalties, HandComputedLogits) {
  const std::vector<float> logits{2.0f, -1.0f, 0.5f, 3.0f, -2.0f};
  auto penalised = [&](double rep, double freq, double pres) {
    SamplingParams p;
    p.repetition_penalty = rep;
    p.frequency_penalty = freq;
    p.presence_penalty = pres;
    SamplerState s(p, /*prompt=*/{0, 1, 1});
    for (TokenId t : {3, 3, 2}) EXPECT_TRUE(s.Observe(t));
    std::vector<float> x = logits;
    s.ApplyPenalties(x.data(), static_cast<int64_t>(x.size()));
    return x;
  };
  // Repetition 2 over prompt {0, 1} and output {2, 3}: positive / 2, negative * 2.
  EXPECT_EQ(penalised(2.0, 0, 0), (std::vector<float>{1.0f, -2.0f, 0.25f, 1.5f, -2.0f}));
  // Frequency .5 * count and presence .25 over output only: 3 seen twice, 2 once.
  EXPECT_EQ(penalised(1.0, 0.5, 0.25), (std::vector<float>{2.0f, -1.0f, -0.25f, 1.75f, -2.0f}));
  // All three, repetition first.
  EXPECT_EQ(penalised(2.0, 0.5, 0.25), (std::vector<float>{1.0f, -2.0f, -0.5f, 0.25f, -2.0f}));
  // Negative penalties encourage repetition.
  EXPECT_EQ(penalised(1.0, -0.5, -1.0), (std::vector<float>{2.0f, -1.0f, 2.0f, 5.0f, -2.0f}));
}

TEST(Penalties, ChangeTheGreedyChoiceAndIgnoreOutOfVocabIds) {
  SamplingParams p;
  p.presence_penalty = 0.2;
  SamplerState s(p, {});
  const at::Tensor logits = Row({3.0f, 2.9f});
  EXPECT_EQ(SampleOne(s, logits), 0);
  EXPECT_TRUE(s.Observe(0));
  EXPECT_TRUE(s.Observe(57));  // outside this vocabulary: ignored, no out-of-bounds write
  EXPECT_EQ(SampleOne(s, logits), 1);
}

TEST(LogitBias, AddedAfterThePenaltiesBansAndForcesTokens) {
  SamplingParams p;
  p.presence_penalty = 0.5;
  p.logit_bias = {{0, -100.f}, {2, 1.5f}};
  SamplerState s(p, {});
  EXPECT_TRUE(s.Observe(2));
  std::vector<float> x{2.0f, -1.0f, 0.5f};
  s.ApplyPenalties(x.data(), 3);
  EXPECT_EQ(x, (std::vector<float>{-98.0f, -1.0f, 1.5f}));  // 0.5 - 0.5 (presence) + 1.5 (bias)
  // -100 on the greedy token: the next one wins; the logprobs stay those of the raw logits.
  SamplingParams g;
  g.logprobs = 1;
  g.logit_bias = {{0, -100.f}};
  SamplerState greedy(g, {});
  std::vector<SamplerState*> states{&greedy};
  const SampleResult r = Sample(Row({3.0f, 2.9f, -1.0f}), states)[0];
  EXPECT_EQ(r.token_id, 1);
  ASSERT_EQ(r.top_logprobs.size(), 1u);
  EXPECT_EQ(r.top_logprobs[0].token_id, 0);
  // +100 on an unlikely token: every seeded draw at T=1 takes it.
  SamplingParams f = Params(1.0, 7);
  f.logit_bias = {{4, 100.f}};
  const std::vector<int> counts = Counts(f, Row({5.f, 4.f, 3.f, 2.f, -10.f}), 200);
  EXPECT_EQ(counts[4], 200);
}

TEST(Logprobs, AreLogSoftmaxOfTheRawLogits) {
  constexpr int64_t kV = 300;
  std::vector<float> data = RandomLogits(3 * kV, 17);
  data[5] = data[6] = 50.f;  // a tie at the top: lower id first
  const at::Tensor logits = at::tensor(data, at::kFloat).view({3, kV});
  SamplingParams p = Params(0.7, 5);
  p.logprobs = 5;
  p.repetition_penalty = 1.3;  // neither penalties nor temperature change the reported logprobs
  p.top_k = 10;
  SamplerState a(p, {1, 2, 3}), b(Params(0.0, 1), {});
  p.logprobs = 20;
  SamplerState c(p, {});
  std::vector<SamplerState*> states{&a, &b, &c};
  std::vector<SampleResult> r = Sample(logits, states);
  const at::Tensor ls = at::log_softmax(logits, 1);
  for (int row : {0, 2}) {
    const auto ref = ls[row];
    EXPECT_NEAR(r[row].logprob, ref[r[row].token_id].item<float>(), 1e-5);
    auto [vals, ids] = at::sort(ref, /*stable=*/true, /*dim=*/0, /*descending=*/true);
    const size_t n = row == 0 ? 5 : 20;
    ASSERT_EQ(r[row].top_logprobs.size(), n);
    for (size_t j = 0; j < n; ++j) {
      EXPECT_EQ(r[row].top_logprobs[j].token_id, ids[j].item<int64_t>()) << "row " << row << " rank " << j;
      EXPECT_NEAR(r[row].top_logprobs[j].logprob, vals[j].item<float>(), 1e-5);
    }
  }
  EXPECT_EQ(r[0].top_logprobs[0].token_id, 5);
  EXPECT_EQ(r[0].top_logprobs[1].token_id, 6);
  EXPECT_TRUE(r[1].top_logprobs.empty());  // logprobs = 0
}

TEST(Sample, ConvertsOtherDtypes) {
  SamplerState s(Params(0.0, 1), {});
  std::vector<SamplerState*> states{&s};
  const at::Tensor logits = at::tensor({0.0, 1.0, 4.0, 2.0}, at::kDouble).view({1, 4});
  EXPECT_EQ(Sample(logits, states)[0].token_id, 2);
  EXPECT_EQ(Sample(logits.to(at::kBFloat16), states)[0].token_id, 2);
}

// A serving-sized step: B = 32 rows of a Llama-3 vocabulary with mixed settings. Prints the time
// (informational; nothing asserted on it) and checks every filter held.
TEST(Sample, Llama3VocabBatch32) {
  constexpr int64_t kV = 128256;
  constexpr int kB = 32;
  const at::Tensor logits = at::randn({kB, kV}, at::kFloat) * 3;
  std::vector<std::unique_ptr<SamplerState>> owned;
  std::vector<SamplerState*> states;
  for (int r = 0; r < kB; ++r) {
    SamplingParams p = Params(r % 4 == 0 ? 0.0 : 0.8, r);
    if (r % 4 == 1) p.top_k = 50;
    if (r % 4 == 2) p.top_p = 0.9;
    if (r % 4 == 3) p.min_p = 0.05;
    if (r % 8 == 1) p.logprobs = 20;
    if (r % 8 == 2) p.repetition_penalty = 1.2;
    std::vector<TokenId> prompt(512);
    std::iota(prompt.begin(), prompt.end(), r * 1000);
    owned.push_back(std::make_unique<SamplerState>(p, prompt));
    states.push_back(owned.back().get());
  }
  Sample(logits, states);  // warm the thread-local scratch
  const auto t0 = std::chrono::steady_clock::now();
  constexpr int kIters = 5;
  std::vector<SampleResult> res;
  for (int i = 0; i < kIters; ++i) res = Sample(logits, states);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / kIters;
  std::printf("Sample [%d, %ld]: %.2f ms per step (%d intra-op threads)\n", kB, static_cast<long>(kV), ms,
              at::get_num_threads());
  const at::Tensor argmax = logits.argmax(1);
  const at::Tensor rank = logits.argsort(/*dim=*/1, /*descending=*/true).argsort(/*dim=*/1, /*descending=*/false);  // rank of each token
  for (int r = 0; r < kB; ++r) {
    const TokenId t = res[r].token_id;
    ASSERT_GE(t, 0);
    ASSERT_LT(t, kV);
    if (r % 4 == 0) {
      EXPECT_EQ(t, argmax[r].item<int64_t>());
    } else if (r % 4 == 1) {
      EXPECT_LT(rank[r][t].item<int64_t>(), 50);
      if (r % 8 == 1) {
        EXPECT_EQ(res[r].top_logprobs.size(), 20u);
      }
    } else if (r % 4 == 3) {
      EXPECT_GE(std::exp((logits[r][t] - logits[r].max()).item<double>() / 0.8), 0.05);
    }
  }
}

}  // namespace
}  // namespace asl::sample

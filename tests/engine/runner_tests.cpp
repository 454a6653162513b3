// The runner with pruning on the default model: the equivalences of issue 3 (full is the plain
// forward pass; pruning that cannot trigger changes nothing; a packed batch gives every sequence
// what it gets alone).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "engine/kv/dense_kv_cache.h"
#include "engine/model/llama_model.h"
#include "engine/model/model_loader.h"
#include "engine/prune/policy.h"
#include "engine/runner/model_runner.h"

namespace asl {
namespace {

class RunnerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(ASL_TEST_MODEL)) return;
    auto loaded = model::LoadModel(ASL_TEST_MODEL, at::kCPU, at::kFloat);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    model_ = new model::LlamaModel(loaded->config, std::move(loaded->weights));
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "default model missing: " << ASL_TEST_MODEL;
  }

  static std::vector<int32_t> Prompt(int64_t n, uint64_t seed) {
    at::manual_seed(static_cast<int64_t>(seed));
    // Random ids from the common part of the vocabulary: a stand-in for long text.
    at::Tensor t = at::randint(100, 20000, {n}, at::kInt);
    return std::vector<int32_t>(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + n);
  }

  struct Result {
    at::Tensor logits;
    PruningReport report;
    std::vector<int64_t> kv_lengths;
    int64_t token_layers = 0;  // of the whole batch
  };

  // Runs prompts together in one packed prefill with a fresh cache.
  static std::vector<Result> Run(const std::vector<std::vector<int32_t>>& prompts, const std::vector<PruningParams>& params) {
    const auto& c = model_->config();
    kv::DenseKvCache cache(static_cast<int>(c.num_layers));
    runner::ModelRunner runner(model_, &cache);
    std::vector<std::unique_ptr<prune::PruningPolicy>> policies;
    std::vector<runner::PrefillSeq> seqs;
    for (size_t i = 0; i < prompts.size(); ++i) {
      PruningParams p = params[i];
      EXPECT_TRUE(ResolvePruningParams(&p, static_cast<int>(c.num_layers)).ok());
      policies.push_back(std::make_unique<prune::PruningPolicy>(p, static_cast<int>(c.num_layers), c.num_kv_heads,
                                                                static_cast<int64_t>(prompts[i].size())));
      EXPECT_TRUE(cache.AddSequence(static_cast<kv::SeqId>(i)).ok());
      seqs.push_back({static_cast<kv::SeqId>(i), prompts[i], policies.back().get()});
    }
    auto out = runner.Prefill(seqs);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    std::vector<Result> res;
    for (size_t i = 0; i < prompts.size(); ++i) {
      Result r{out->logits[static_cast<int64_t>(i)].clone(), policies[i]->report(), {}, out->token_layers};
      for (int l = 0; l < c.num_layers; ++l) r.kv_lengths.push_back(cache.Length(static_cast<kv::SeqId>(i), l));
      res.push_back(std::move(r));
    }
    return res;
  }

  // A sequence in a batch against the same sequence alone: same selection, kept KV and output.
  static void ExpectSameOutcome(const Result& alone, const Result& batched) {
    EXPECT_EQ(alone.report.selection_layer, batched.report.selection_layer);
    EXPECT_EQ(alone.report.selected_positions, batched.report.selected_positions);
    EXPECT_EQ(alone.kv_lengths, batched.kv_lengths);
    EXPECT_TRUE(at::allclose(alone.logits, batched.logits, 1e-4, 1e-4));
    EXPECT_EQ(alone.logits.argmax().item<int64_t>(), batched.logits.argmax().item<int64_t>());
  }

  static model::LlamaModel* model_;
};
model::LlamaModel* RunnerTest::model_ = nullptr;

PruningParams Params(PolicyKind policy, int select_k, int kv_budget, double tau = 0.3) {
  PruningParams p;
  p.policy = policy;
  p.select_k = select_k;
  p.kv_budget = kv_budget;
  p.tau = tau;
  return p;
}

TEST_F(RunnerTest, AslThatCannotTriggerEqualsFullBitForBit) {
  auto prompt = Prompt(700, 1);
  auto full = Run({prompt}, {Params(PolicyKind::kFull, 2048, 0)});
  auto asl = Run({prompt}, {Params(PolicyKind::kAsl, 128, 0, /*tau=*/1e-30)});
  EXPECT_EQ(asl[0].report.outcome, SelectionOutcome::kNone);
  EXPECT_FALSE(asl[0].report.variance_ratios.empty()) << "the test must actually have run";
  EXPECT_TRUE(at::equal(full[0].logits, asl[0].logits));
}

TEST_F(RunnerTest, BudgetsAtLeastThePromptEqualFull) {
  auto prompt = Prompt(300, 2);
  auto full = Run({prompt}, {Params(PolicyKind::kFull, 2048, 0)});
  for (PolicyKind p : {PolicyKind::kSnapKv, PolicyKind::kFastKv, PolicyKind::kAsl, PolicyKind::kGemFilter, PolicyKind::kAsl2Pass}) {
    auto r = Run({prompt}, {Params(p, 300, 300)});
    EXPECT_TRUE(at::equal(full[0].logits, r[0].logits)) << PolicyName(p);
    EXPECT_EQ(r[0].report.num_propagated_tokens, 300) << PolicyName(p);
  }
}

TEST_F(RunnerTest, KvBudgetIsExactPerLayer) {
  auto prompt = Prompt(500, 3);
  auto r = Run({prompt}, {Params(PolicyKind::kSnapKv, 2048, 128)});
  for (int64_t len : r[0].kv_lengths) EXPECT_EQ(len, 128);
  auto f = Run({prompt}, {Params(PolicyKind::kFastKv, 200, 0)});
  const int sel = static_cast<int>(std::lround(model_->config().num_layers * 15 / 32.0));
  for (int l = 0; l < static_cast<int>(f[0].kv_lengths.size()); ++l) {
    EXPECT_EQ(f[0].kv_lengths[l], l <= sel ? 500 : 200) << "layer " << l;
  }
  EXPECT_EQ(f[0].report.selection_layer, sel);
  const int64_t L = model_->config().num_layers;
  EXPECT_EQ(f[0].report.prefill_token_layers, (sel + 1) * 500 + (L - sel - 1) * 200);
  EXPECT_EQ(r[0].report.prefill_token_layers, L * 500);  // snapkv compresses the KV, not the prefill
  // Propagated tokens keep their original positions: the window is the last 32 positions.
  ASSERT_EQ(f[0].report.selected_positions.size(), 200u);
  EXPECT_EQ(f[0].report.selected_positions.back(), 499);
  EXPECT_EQ(f[0].report.selected_positions[200 - 32], 500 - 32);
}

TEST_F(RunnerTest, PackedBatchGivesEachSequenceItsOwnResult) {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<PruningParams> params;
  const PolicyKind kinds[] = {PolicyKind::kAsl, PolicyKind::kFull, PolicyKind::kSnapKv, PolicyKind::kFastKv,
                              PolicyKind::kGemFilter, PolicyKind::kAsl2Pass, PolicyKind::kAsl, PolicyKind::kAsl};
  for (int i = 0; i < 8; ++i) {
    prompts.push_back(Prompt(150 + 97 * i, 10 + i));
    params.push_back(Params(kinds[i], 128, i % 2 ? 96 : 0, i == 7 ? 1e-30 : 0.9));
    if (i == 6) params.back().max_layer = 20;
  }
  auto together = Run(prompts, params);
  for (int i = 0; i < 8; ++i) {
    auto alone = Run({prompts[i]}, {params[i]});
    SCOPED_TRACE(std::string("sequence ") + std::to_string(i) + " " + PolicyName(kinds[i]));
    ExpectSameOutcome(alone[0], together[i]);
  }
}

TEST_F(RunnerTest, IdenticalPromptsShareRowsAndEachGetsItsOwnResult) {
  // One prompt under every policy (as the accuracy benchmark sends it), beside another prompt:
  // the copies are computed once until their policies diverge, and each still gets what it gets
  // alone.
  const auto a = Prompt(400, 30), b = Prompt(250, 31);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<PruningParams> params;
  const PolicyKind kinds[] = {PolicyKind::kFull, PolicyKind::kSnapKv, PolicyKind::kFastKv, PolicyKind::kGemFilter,
                              PolicyKind::kAsl, PolicyKind::kAsl2Pass, PolicyKind::kAsl, PolicyKind::kSnapKv};
  for (size_t i = 0; i < std::size(kinds); ++i) {
    prompts.push_back(i == std::size(kinds) - 1 ? b : a);
    params.push_back(Params(kinds[i], 128, i % 2 ? 96 : 0, i == 6 ? 0.9 : 0.3));
  }
  auto together = Run(prompts, params);
  int64_t alone_rows = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = Run({prompts[i]}, {params[i]});
    alone_rows += alone[0].token_layers;
    SCOPED_TRACE(std::string("sequence ") + std::to_string(i) + " " + PolicyName(kinds[i]));
    ExpectSameOutcome(alone[0], together[i]);
  }
  // full and snapkv never cut, so the shared prompt's rows run through every layer once: the batch
  // computes fewer rows than its sequences alone, and at least prompt a and b through all layers.
  const int64_t L = model_->config().num_layers;
  EXPECT_LT(together[0].token_layers, alone_rows);
  EXPECT_GE(together[0].token_layers, (400 + 250) * L);
  // Two copies with the same policy and prompt share everything: exactly the rows of one.
  auto pair = Run({a, a}, {Params(PolicyKind::kSnapKv, 128, 96), Params(PolicyKind::kFull, 128, 0)});
  EXPECT_EQ(pair[0].token_layers, 400 * L);
  EXPECT_TRUE(at::equal(pair[0].logits, pair[1].logits));
}

TEST_F(RunnerTest, DecodeOfEachSequenceIsIndependentOfItsBatchBitForBit) {
  // 40 sequences (more than any kernel's tile or thread split) with the same cache contents: one
  // decode step of all of them together against each one's step alone, and a second step of a
  // subset. The projections of per-sequence rows compute every row the same way whatever the batch.
  const auto& c = model_->config();
  const int L = static_cast<int>(c.num_layers);
  constexpr int kSeqs = 40;
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kSeqs; ++i) prompts.push_back(Prompt(5 + 3 * i, 50 + i));
  auto prefilled = [&](kv::DenseKvCache& cache, std::vector<std::unique_ptr<prune::PruningPolicy>>& policies) {
    runner::ModelRunner runner(model_, &cache);
    std::vector<runner::PrefillSeq> seqs;
    for (int i = 0; i < kSeqs; ++i) {
      PruningParams p = Params(PolicyKind::kFull, 2048, 0);
      ASSERT_TRUE(ResolvePruningParams(&p, L).ok());
      policies.push_back(std::make_unique<prune::PruningPolicy>(p, L, c.num_kv_heads, static_cast<int64_t>(prompts[i].size())));
      ASSERT_TRUE(cache.AddSequence(static_cast<kv::SeqId>(i)).ok());
      seqs.push_back({static_cast<kv::SeqId>(i), prompts[i], policies.back().get()});
    }
    ASSERT_TRUE(runner.Prefill(seqs).ok());
  };
  kv::DenseKvCache together_cache(L), alone_cache(L);
  std::vector<std::unique_ptr<prune::PruningPolicy>> p1, p2;
  prefilled(together_cache, p1);
  prefilled(alone_cache, p2);
  runner::ModelRunner together(model_, &together_cache), alone(model_, &alone_cache);
  auto step = [&](int i, int n) {
    return runner::DecodeSeq{static_cast<kv::SeqId>(i), static_cast<int32_t>(1000 + 7 * i + n),
                             static_cast<int64_t>(prompts[i].size()) + n};
  };
  for (int n = 0; n < 2; ++n) {
    std::vector<runner::DecodeSeq> batch;
    for (int i = n; i < kSeqs; i += n + 1) batch.push_back(step(i, n));  // all, then every other
    auto all = together.Decode(batch);
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    for (size_t b = 0; b < batch.size(); ++b) {
      auto one = alone.Decode({batch[b]});
      ASSERT_TRUE(one.ok()) << one.status().ToString();
      EXPECT_TRUE(at::equal((*all)[static_cast<int64_t>(b)], (*one)[0])) << "step " << n << " sequence " << batch[b].seq;
    }
  }
}

}  // namespace
}  // namespace asl

// Prefix caching through the model runner (docs/architecture.md, "Prefix cache"): a prompt whose
// prefix comes from the cache gets the same logits (up to float rounding), selection layer, kept
// positions and stored KV as without the cache, for all six policies, in one packed batch where hits
// sit next to a miss; slicing a cached prefill changes nothing; a multi-turn chat hits the previous
// turn's generated tokens. On a tiny random model with a float32 pool (label unit).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "engine/kv/block_pool.h"
#include "engine/model/model_loader.h"
#include "engine/prune/policy.h"
#include "engine/runner/model_runner.h"
#include "tests/engine/tiny_model.h"

namespace asl {
namespace {

struct CachedOutcome {
  at::Tensor logits;
  int64_t next_position = 0;
  int64_t hit = 0;  // cached prefix tokens it started from
  PruningReport report;
  std::vector<std::pair<at::Tensor, at::Tensor>> kv;  // per layer, float32
};

std::unique_ptr<kv::BlockPool> Pool(const model::LlamaModel& m, bool cache, int64_t num_blocks = 4000) {
  const auto& c = m.config();
  auto pool = kv::BlockPool::Create(kv::BlockPoolOptions{static_cast<int>(c.num_layers), c.num_kv_heads, c.head_dim,
                                                         at::kFloat, at::kCPU, /*block_size=*/8, num_blocks, 0});
  EXPECT_TRUE(pool.ok());
  if (cache) (*pool)->SetCacheCapacity(num_blocks, /*salt=*/1);
  return std::move(pool).value();
}

// Prefills `prompts` as one packed batch on `pool` as the engine does: each sequence pins its
// longest usable cached prefix (when use_cache), then the runner computes the rest. The sequences
// are freed afterwards, offering their KV to the cache.
std::vector<CachedOutcome> Prefill(const model::LlamaModel& m, kv::BlockPool& pool, const std::vector<std::vector<int32_t>>& prompts,
                                   const std::vector<PruningParams>& params, bool use_cache, double budget = 0,
                               kv::SeqId first_id = 1) {
  const auto& c = m.config();
  const int L = static_cast<int>(c.num_layers);
  kv::PagedKvCache cache(&pool);
  runner::ModelRunner runner(&m, &cache, runner::PrefillOptions{32});
  std::vector<std::unique_ptr<prune::PruningPolicy>> policies;
  std::vector<runner::PrefillSeq> seqs;
  std::vector<CachedOutcome> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    PruningParams p = params[i];
    EXPECT_TRUE(ResolvePruningParams(&p, L).ok());
    const kv::SeqId id = first_id + static_cast<kv::SeqId>(i);
    EXPECT_TRUE(pool.AddSequence(id).ok());
    const int64_t n = static_cast<int64_t>(prompts[i].size());
    if (use_cache) {
      out[i].hit = pool.LookupPrefix(prompts[i], n - prune::MinComputedTokens(p)).num_tokens;
      if (out[i].hit > 0) EXPECT_TRUE(pool.PinPrefix(id, prompts[i], out[i].hit, prune::StoresWholePrompt(p)).ok());
    }
    policies.push_back(std::make_unique<prune::PruningPolicy>(p, L, c.num_kv_heads, n));
    seqs.push_back({id, prompts[i], policies.back().get(), use_cache});
  }
  auto result = runner.Prefill(seqs, budget);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  if (!result.ok()) return {};
  for (size_t i = 0; i < prompts.size(); ++i) {
    const kv::SeqId id = first_id + static_cast<kv::SeqId>(i);
    out[i].logits = result->logits[static_cast<int64_t>(i)].clone();
    out[i].next_position = result->next_positions[i];
    out[i].report = policies[i]->report();
    for (int l = 0; l < L; ++l) {
      auto [k, v] = pool.Gather(id, l);
      out[i].kv.emplace_back(k.to(at::kFloat), v.to(at::kFloat));
    }
    pool.ReleasePins(id);
    cache.CacheSequence(id, prompts[i]);
    pool.FreeSequence(id);
  }
  EXPECT_TRUE(pool.CheckInvariants().ok()) << pool.CheckInvariants().ToString();
  return out;
}

bool Close(const at::Tensor& a, const at::Tensor& b, double tol) {
  return a.sizes() == b.sizes() && at::allclose(a, b, tol, tol);
}

// The same decisions, logits and stored KV up to float rounding (the cached K/V were computed in
// another batch, whose GEMMs may round the last bits differently).
void ExpectSame(const CachedOutcome& want, const CachedOutcome& got, double tol = 1e-4) {
  EXPECT_TRUE(Close(want.logits, got.logits, tol)) << (want.logits - got.logits).abs().max().item<float>();
  EXPECT_EQ(want.next_position, got.next_position);
  EXPECT_EQ(want.report.outcome, got.report.outcome);
  EXPECT_EQ(want.report.selection_layer, got.report.selection_layer);
  EXPECT_EQ(want.report.num_propagated_tokens, got.report.num_propagated_tokens);
  EXPECT_EQ(want.report.selected_positions, got.report.selected_positions);
  ASSERT_EQ(want.kv.size(), got.kv.size());
  for (size_t l = 0; l < want.kv.size(); ++l) {
    EXPECT_TRUE(Close(want.kv[l].first, got.kv[l].first, tol)) << "K of layer " << l;
    EXPECT_TRUE(Close(want.kv[l].second, got.kv[l].second, tol)) << "V of layer " << l;
  }
}

constexpr PolicyKind kPolicies[] = {PolicyKind::kFull,      PolicyKind::kSnapKv, PolicyKind::kFastKv,
                                    PolicyKind::kGemFilter, PolicyKind::kAsl,    PolicyKind::kAsl2Pass};

struct BatchShape {
  int64_t shared = 96;  // tokens of the shared prefix
  int64_t vocab = 512;  // prompt tokens are drawn from [1, vocab)
  int select_k = 48, kv_budget = 40, obs_layers = 2, min_layer = 2, max_layer = 3;
  int fastkv_layer = 2, gemfilter_layer = 3;
};

// Every policy twice (tau met early / late, ASL forced at max_layer) on prompts that share a prefix,
// and one prompt that shares nothing.
void Batch(const BatchShape& b, std::vector<std::vector<int32_t>>* prompts, std::vector<PruningParams>* params) {
  const int64_t vocab = b.vocab;
  const auto shared = Prompt(b.shared, 5, vocab);
  int i = 0;
  for (PolicyKind kind : kPolicies) {
    for (bool late : {false, true}) {
      PruningParams p;
      p.policy = kind;
      p.window = 8;
      p.kernel = 3;
      p.obs_layers = b.obs_layers;
      p.min_layer = b.min_layer;
      p.select_k = b.select_k;
      p.kv_budget = b.kv_budget;
      p.tau = late ? 0.9 : 0.3;
      p.select_layer = kind == PolicyKind::kFastKv ? b.fastkv_layer : (kind == PolicyKind::kGemFilter ? b.gemfilter_layer : -1);
      if (kind == PolicyKind::kAsl && late) p.max_layer = b.max_layer;
      std::vector<int32_t> prompt = shared;
      for (int32_t t : Prompt(30 + 9 * i, 40 + i, vocab)) prompt.push_back(t);
      prompts->push_back(prompt);
      params->push_back(p);
      ++i;
    }
  }
  prompts->push_back(Prompt(b.shared + 34, 99, vocab));  // a miss beside the hits
  params->push_back(params->at(8));            // asl
}

// again_and_sliced: also the same batch a second time (hitting its own blocks) and sliced.
void ExpectCacheChangesNothing(const model::LlamaModel& model, const BatchShape& shape, double tol,
                               bool again_and_sliced) {
  const model::LlamaModel* m = &model;
  const int64_t P = shape.shared;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<PruningParams> params;
  Batch(shape, &prompts, &params);
  // Room for the batch three times over (a cached copy of every prompt, the batch, the donor).
  int64_t num_blocks = 0;
  for (const auto& p : prompts) num_blocks += 3 * m->config().num_layers * (static_cast<int64_t>(p.size()) / 8 + 2);

  auto plain = Pool(*m, /*cache=*/false, num_blocks);
  const std::vector<CachedOutcome> want = Prefill(*m, *plain, prompts, params, /*use_cache=*/false);
  ASSERT_EQ(want.size(), prompts.size());
  plain.reset();

  // A first request caches the shared prefix (and its own tail), then is gone.
  auto warmed = [&] {
    auto pool = Pool(*m, /*cache=*/true, num_blocks);
    std::vector<int32_t> donor(prompts[0].begin(), prompts[0].begin() + P);
    for (int32_t t : Prompt(20, 7, m->config().vocab_size)) donor.push_back(t);
    Prefill(*m, *pool, {donor}, {PruningParams{}}, true, 0, /*first_id=*/100);
    EXPECT_GT(pool->num_blocks_evictable(), 0);
    return pool;
  };
  auto pool = warmed();
  const std::vector<CachedOutcome> got = Prefill(*m, *pool, prompts, params, /*use_cache=*/true);
  ASSERT_EQ(got.size(), prompts.size());
  bool recomputed_prefix_rows = false;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i) + " " + PolicyName(params[i].policy));
    EXPECT_EQ(got[i].hit, i + 1 < prompts.size() ? P : 0);
    ExpectSame(want[i], got[i], tol);
    if (params[i].policy == PolicyKind::kFull || params[i].policy == PolicyKind::kSnapKv) {
      // Only the tokens after the prefix were computed, at every layer.
      EXPECT_EQ(got[i].report.prefill_token_layers, want[i].report.prefill_token_layers - m->config().num_layers * got[i].hit);
    }
    const auto& sel = got[i].report.selected_positions;
    const bool one_shot = params[i].policy == PolicyKind::kAsl || params[i].policy == PolicyKind::kFastKv;
    recomputed_prefix_rows |= one_shot && !sel.empty() && sel.front() < P;
  }
  // A one-shot selection kept cached-prefix tokens, so their recomputed rows were checked too.
  EXPECT_TRUE(recomputed_prefix_rows);
  if (!again_and_sliced) return;

  // The batch cached its own prompts where it computed them uncompressed at every layer (not past a
  // cut): the same batch again hits more there.
  const std::vector<CachedOutcome> again = Prefill(*m, *pool, prompts, params, true, 0, /*first_id=*/200);
  ASSERT_EQ(again.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("again: sequence " + std::to_string(i));
    if (got[i].report.selection_layer < 0) EXPECT_GT(again[i].hit, got[i].hit);
    EXPECT_GE(again[i].hit, got[i].hit);
    ExpectSame(want[i], again[i], tol);
  }

  // Sliced into one chunk per step, the cached prefill is bit-identical to the unsliced one.
  pool.reset();
  auto fresh = warmed();
  const std::vector<CachedOutcome> sliced = Prefill(*m, *fresh, prompts, params, true, /*budget=*/1e-9);
  ASSERT_EQ(sliced.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("sliced: sequence " + std::to_string(i));
    ASSERT_EQ(sliced[i].hit, got[i].hit);
    EXPECT_TRUE(at::equal(sliced[i].logits, got[i].logits));
    EXPECT_EQ(sliced[i].report.selected_positions, got[i].report.selected_positions);
  }
}

TEST(TinyPrefixCache, OutputsWithAndWithoutTheCacheAreTheSameForEveryPolicy) {
  auto m = TinyModel();
  ExpectCacheChangesNothing(*m, BatchShape{}, 1e-4, /*again_and_sliced=*/true);
}

// The same on the default model (SmolLM2-135M, 30 layers), label model.
TEST(PrefixCache, OutputsWithAndWithoutTheCacheAreTheSameOnTheDefaultModel) {
  if (!std::filesystem::exists(ASL_TEST_MODEL)) GTEST_SKIP() << "default model missing: " << ASL_TEST_MODEL;
  auto loaded = model::LoadModel(ASL_TEST_MODEL, at::kCPU, at::kFloat);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  model::LlamaModel m(loaded->config, std::move(loaded->weights));
  BatchShape shape;
  shape.shared = 192;
  shape.vocab = 20000;
  shape.select_k = 128;
  shape.kv_budget = 96;
  shape.obs_layers = 8;
  shape.min_layer = -1;
  shape.max_layer = 20;
  shape.fastkv_layer = 6;
  shape.gemfilter_layer = 13;
  ExpectCacheChangesNothing(m, shape, 2e-3, /*again_and_sliced=*/false);
}

TEST(TinyPrefixCache, NextTurnHitsThePreviousTurnsGeneratedTokens) {
  auto m = TinyModel();
  const auto& c = m->config();
  auto pool = Pool(*m, true);
  kv::PagedKvCache cache(pool.get());
  runner::ModelRunner runner(m.get(), &cache);
  PruningParams p;
  ASSERT_TRUE(ResolvePruningParams(&p, static_cast<int>(c.num_layers)).ok());
  const std::vector<int32_t> turn1 = Prompt(37, 3, c.vocab_size);
  prune::PruningPolicy policy(p, static_cast<int>(c.num_layers), c.num_kv_heads, 37);
  ASSERT_TRUE(pool->AddSequence(1).ok());
  std::vector<runner::PrefillSeq> seqs{{1, turn1, &policy}};
  auto pre = runner.Prefill(seqs);
  ASSERT_TRUE(pre.ok());
  // Greedy decode of 20 tokens (the last one is sampled, never fed).
  std::vector<int32_t> all = turn1;
  int32_t token = static_cast<int32_t>(pre->logits[0].argmax().item<int64_t>());
  for (int i = 0; i < 20; ++i) {
    all.push_back(token);
    auto logits = runner.Decode({{1, token, static_cast<int64_t>(all.size()) - 1}});
    ASSERT_TRUE(logits.ok());
    token = static_cast<int32_t>((*logits)[0].argmax().item<int64_t>());
  }
  cache.CacheSequence(1, all);  // 57 tokens stored: 7 whole blocks
  pool->FreeSequence(1);
  std::vector<int32_t> turn2 = all;
  for (int32_t t : Prompt(12, 4, c.vocab_size)) turn2.push_back(t);
  EXPECT_EQ(pool->LookupPrefix(turn2, static_cast<int64_t>(turn2.size()) - 1).num_tokens, 56);  // past turn 1's 37
  // And the next turn's prefill from there matches one without the cache.
  auto plain = Pool(*m, false);
  const auto want = Prefill(*m, *plain, {turn2}, {p}, false);
  const auto got = Prefill(*m, *pool, {turn2}, {p}, true);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].hit, 56);
  // Decode computed the generated tokens' K/V one row at a time: the same numbers up to rounding.
  ExpectSame(want[0], got[0]);
}

}  // namespace
}  // namespace asl

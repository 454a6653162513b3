// Layer-sliced prefill (docs/architecture.md, "Layer-sliced prefill"): a prompt's logits, selection,
// kept positions and stored KV are bit-identical whether its prefill runs in one Advance or in
// slices of any size, for every policy; a sequence dropped mid-prefill leaves the others their
// results. On a tiny random model (label unit) and on the default model (label model).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "engine/kv/dense_kv_cache.h"
#include "engine/model/llama_model.h"
#include "engine/model/model_loader.h"
#include "engine/prune/policy.h"
#include "engine/runner/model_runner.h"
#include "tests/engine/tiny_model.h"

namespace asl {
namespace {

// Everything a prefill leaves behind for one sequence.
struct Outcome {
  at::Tensor logits;
  int64_t next_position = 0;
  PruningReport report;
  std::vector<std::pair<at::Tensor, at::Tensor>> kv;  // per layer: K, V [Hkv, len, d]
};

struct BatchOutcome {
  std::vector<Outcome> seqs;
  int64_t token_layers = 0;
  int num_slices = 0;
};

// What every test here starts a prefill from: a fresh cache and runner, and per prompt i a policy
// for params[i] and a cache sequence with id i.
struct PrefillSetup {
  PrefillSetup(const model::LlamaModel& m, const std::vector<std::vector<int32_t>>& prompts,
               const std::vector<PruningParams>& params, runner::PrefillOptions options = {})
      : cache(static_cast<int>(m.config().num_layers)), runner(&m, &cache, options) {
    const int L = static_cast<int>(m.config().num_layers);
    for (size_t i = 0; i < prompts.size(); ++i) {
      PruningParams p = params[i];
      const Status resolved = ResolvePruningParams(&p, L);
      EXPECT_TRUE(resolved.ok()) << resolved.ToString();
      policies.push_back(std::make_unique<prune::PruningPolicy>(p, L, m.config().num_kv_heads,
                                                                static_cast<int64_t>(prompts[i].size())));
      EXPECT_TRUE(cache.AddSequence(static_cast<kv::SeqId>(i)).ok());
      seqs.push_back({static_cast<kv::SeqId>(i), prompts[i], policies.back().get()});
    }
  }
  PrefillSetup(const PrefillSetup&) = delete;  // the runner points at the cache
  PrefillSetup& operator=(const PrefillSetup&) = delete;

  kv::DenseKvCache cache;
  runner::ModelRunner runner;
  std::vector<std::unique_ptr<prune::PruningPolicy>> policies;
  std::vector<runner::PrefillSeq> seqs;
};

// Prefills `prompts` together under `params` with the given budget, on a fresh cache.
BatchOutcome RunBatch(const model::LlamaModel& m, const std::vector<std::vector<int32_t>>& prompts,
                      const std::vector<PruningParams>& params, double budget, runner::PrefillOptions options) {
  const int L = static_cast<int>(m.config().num_layers);
  PrefillSetup setup(m, prompts, params, options);
  auto& [cache, runner, policies, seqs] = setup;
  auto out = runner.Prefill(seqs, budget);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  BatchOutcome b;
  if (!out.ok()) return b;
  b.token_layers = out->token_layers;
  b.num_slices = out->num_slices;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Outcome o;
    o.logits = out->logits[static_cast<int64_t>(i)].clone();
    o.next_position = out->next_positions[i];
    o.report = policies[i]->report();
    for (int l = 0; l < L; ++l) o.kv.push_back(cache.Gather(static_cast<kv::SeqId>(i), l));
    b.seqs.push_back(std::move(o));
  }
  return b;
}

bool SameTensor(const at::Tensor& a, const at::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  return !a.defined() || (a.sizes() == b.sizes() && at::equal(a, b));
}

// Bit for bit: logits, positions, the report's decisions and every layer's stored K and V.
void ExpectIdentical(const Outcome& want, const Outcome& got) {
  EXPECT_TRUE(at::equal(want.logits, got.logits));
  EXPECT_EQ(want.next_position, got.next_position);
  EXPECT_EQ(want.report.outcome, got.report.outcome);
  EXPECT_EQ(want.report.selection_layer, got.report.selection_layer);
  EXPECT_EQ(want.report.num_propagated_tokens, got.report.num_propagated_tokens);
  EXPECT_EQ(want.report.selected_positions, got.report.selected_positions);
  EXPECT_EQ(want.report.variance_ratios, got.report.variance_ratios);
  EXPECT_EQ(want.report.prefill_token_layers, got.report.prefill_token_layers);
  ASSERT_EQ(want.kv.size(), got.kv.size());
  for (size_t l = 0; l < want.kv.size(); ++l) {
    EXPECT_TRUE(SameTensor(want.kv[l].first, got.kv[l].first)) << "K of layer " << l;
    EXPECT_TRUE(SameTensor(want.kv[l].second, got.kv[l].second)) << "V of layer " << l;
  }
}

constexpr PolicyKind kAllPolicies[] = {PolicyKind::kFull,      PolicyKind::kSnapKv, PolicyKind::kFastKv,
                                       PolicyKind::kGemFilter, PolicyKind::kAsl,    PolicyKind::kAsl2Pass};

// Every policy on one prompt, others on their own prompts, a copy that shares rows with its twin,
// and a forced ASL selection, so that the batch cuts, shares, leaves for a second pass and shrinks.
void MixedBatch(int64_t base_len, int64_t vocab, int select_k, int kv_budget, int obs_layers, int min_layer,
                int max_layer, std::vector<std::vector<int32_t>>* prompts, std::vector<PruningParams>* params) {
  const auto shared = Prompt(base_len, 5, vocab);
  int i = 0;
  for (PolicyKind kind : kAllPolicies) {
    for (bool own_prompt : {false, true}) {
      PruningParams p;
      p.policy = kind;
      p.window = 8;
      p.kernel = 3;
      p.obs_layers = obs_layers;
      p.min_layer = min_layer;
      p.select_k = select_k;
      p.kv_budget = kv_budget;
      p.tau = own_prompt ? 0.9 : 0.3;
      if (kind == PolicyKind::kAsl && own_prompt) p.max_layer = max_layer;  // forced if tau is not reached
      prompts->push_back(own_prompt ? Prompt(base_len + 13 * i, 40 + i, vocab) : shared);
      params->push_back(p);
      ++i;
    }
  }
}

void ExpectSlicingChangesNothing(const model::LlamaModel& m, const std::vector<std::vector<int32_t>>& prompts,
                                 const std::vector<PruningParams>& params, runner::PrefillOptions options) {
  const BatchOutcome whole = RunBatch(m, prompts, params, /*budget=*/0, options);
  ASSERT_EQ(whole.seqs.size(), prompts.size());
  EXPECT_EQ(whole.num_slices, 1);
  // At least one sequence selected, one used a second pass: the test covers what slicing must keep.
  bool selected = false, second_pass = false;
  for (size_t i = 0; i < params.size(); ++i) {
    selected |= whole.seqs[i].report.selection_layer >= 0;
    second_pass |= whole.seqs[i].next_position < static_cast<int64_t>(prompts[i].size());
  }
  EXPECT_TRUE(selected);
  EXPECT_TRUE(second_pass);

  runner::PrefillCostModel cost = runner::PrefillCostModel::For(m.config());
  const double one_prompt_layer = cost.SegmentLayerCost(static_cast<int64_t>(prompts[0].size()));
  // Every chunk its own slice; a few prompt-layers per slice; a budget that cuts mid-pass.
  for (double budget : {1e-9, 3 * one_prompt_layer, 7.5 * one_prompt_layer}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    const BatchOutcome sliced = RunBatch(m, prompts, params, budget, options);
    ASSERT_EQ(sliced.seqs.size(), prompts.size());
    EXPECT_GT(sliced.num_slices, 1);
    EXPECT_EQ(sliced.token_layers, whole.token_layers);
    for (size_t i = 0; i < prompts.size(); ++i) {
      SCOPED_TRACE("sequence " + std::to_string(i) + " " + PolicyName(params[i].policy));
      ExpectIdentical(whole.seqs[i], sliced.seqs[i]);
    }
  }
  // One chunk per slice: at least a slice per layer of each pass.
  const int L = static_cast<int>(m.config().num_layers);
  const BatchOutcome per_chunk = RunBatch(m, prompts, params, 1e-9, options);
  EXPECT_GE(per_chunk.num_slices, L + 1);  // pass 1, then at least one layer of pass 2
  if (options.chunk_rows == 0) {
    EXPECT_LE(per_chunk.num_slices, 2 * L);
  }
}

// Chunks of 32 rows split segments and span several; whole layers are one chunk each.
constexpr runner::PrefillOptions kChunked{32};
constexpr runner::PrefillOptions kWholeLayers{0};

TEST(TinyPrefillSlices, SlicedEqualsUnslicedForEveryPolicy) {
  auto m = TinyModel();
  std::vector<std::vector<int32_t>> prompts;
  std::vector<PruningParams> params;
  MixedBatch(/*base_len=*/120, m->config().vocab_size, /*select_k=*/48, /*kv_budget=*/40, /*obs_layers=*/2,
             /*min_layer=*/2, /*max_layer=*/3, &prompts, &params);
  for (PruningParams& p : params) p.select_layer = p.policy == PolicyKind::kFastKv ? 2 : (p.policy == PolicyKind::kGemFilter ? 3 : -1);
  for (runner::PrefillOptions options : {kChunked, kWholeLayers}) {
    SCOPED_TRACE("chunk_rows " + std::to_string(options.chunk_rows));
    ExpectSlicingChangesNothing(*m, prompts, params, options);
  }
}

TEST(TinyPrefillSlices, ChunkedLayersComputeWhatWholeLayersCompute) {
  // Chunks change the GEMMs' shapes, so only float rounding may differ: the same decisions, the
  // same KV lengths, logits within rounding.
  auto m = TinyModel();
  std::vector<std::vector<int32_t>> prompts;
  std::vector<PruningParams> params;
  MixedBatch(/*base_len=*/120, m->config().vocab_size, 48, 40, 2, 2, 3, &prompts, &params);
  const BatchOutcome whole = RunBatch(*m, prompts, params, 0, kWholeLayers);
  for (int64_t rows : {13, 50}) {
    SCOPED_TRACE("chunk_rows " + std::to_string(rows));
    const BatchOutcome chunked = RunBatch(*m, prompts, params, 0, runner::PrefillOptions{rows});
    EXPECT_EQ(chunked.token_layers, whole.token_layers);
    for (size_t i = 0; i < prompts.size(); ++i) {
      SCOPED_TRACE("sequence " + std::to_string(i) + " " + PolicyName(params[i].policy));
      EXPECT_EQ(chunked.seqs[i].report.selection_layer, whole.seqs[i].report.selection_layer);
      EXPECT_EQ(chunked.seqs[i].report.selected_positions, whole.seqs[i].report.selected_positions);
      EXPECT_EQ(chunked.seqs[i].next_position, whole.seqs[i].next_position);
      EXPECT_TRUE(at::allclose(chunked.seqs[i].logits, whole.seqs[i].logits, 1e-4, 1e-4));
      for (size_t l = 0; l < whole.seqs[i].kv.size(); ++l) {
        const auto& w = whole.seqs[i].kv[l];
        const auto& c = chunked.seqs[i].kv[l];
        ASSERT_EQ(w.first.defined(), c.first.defined());
        if (!w.first.defined()) continue;
        ASSERT_EQ(w.first.sizes(), c.first.sizes()) << "layer " << l;
        EXPECT_TRUE(at::allclose(w.first, c.first, 1e-4, 1e-4)) << "K of layer " << l;
        EXPECT_TRUE(at::allclose(w.second, c.second, 1e-4, 1e-4)) << "V of layer " << l;
      }
    }
  }
}

TEST(TinyPrefillSlices, ChunksCostWhatTheirLayerCosts) {
  // A layer's chunks add up to its cost: rows once, each causal pair once.
  auto m = TinyModel();
  PruningParams p;
  p.obs_layers = 2;
  p.min_layer = 2;
  PrefillSetup setup(*m, {Prompt(50, 53, 512), Prompt(30, 33, 512)}, {p, p}, runner::PrefillOptions{16});
  auto& [cache, runner, policies, seqs] = setup;
  auto job = runner.StartPrefill(seqs);
  ASSERT_TRUE(job.ok());
  const runner::PrefillCostModel& cost = runner.cost_model();
  double sum = 0;
  int chunks = 0;
  while (job->layer() == 0) {
    sum += runner.NextChunkCost(*job);
    auto slice = runner.Advance(*job, 1e-9);
    ASSERT_TRUE(slice.ok());
    EXPECT_EQ(slice->num_chunks, 1);
    EXPECT_LE(slice->token_layers, 16);
    chunks++;
  }
  EXPECT_EQ(chunks, 5);  // 80 rows in chunks of 16
  EXPECT_NEAR(sum, cost.SegmentLayerCost(50) + cost.SegmentLayerCost(30), 1e-9);
  EXPECT_EQ(job->row(), 0);
}

TEST(TinyPrefillSlices, CostModelCountsRowsAndAttentionPairs) {
  auto m = TinyModel();
  const runner::PrefillCostModel cost = runner::PrefillCostModel::For(m->config());
  // 4 H d = 256 FLOPs per pair over 2 x (64*64*2 + 64*32*2 + 3*64*128) = 73728 FLOPs per row.
  EXPECT_DOUBLE_EQ(cost.attention_pair_weight, 256.0 / 73728.0);
  EXPECT_DOUBLE_EQ(cost.SegmentLayerCost(100), 100 + 256.0 / 73728.0 * 100 * 101 / 2);
  EXPECT_DOUBLE_EQ(cost.PromptCost(100, 6), 6 * cost.SegmentLayerCost(100));

  // A job's next layer costs its segments; identical prompts share one.
  PruningParams p;
  p.obs_layers = 2;
  p.min_layer = 2;
  const auto a = Prompt(50, 1, 512), b = Prompt(30, 2, 512);
  PrefillSetup setup(*m, {a, a, b}, {p, p, p});
  auto& [cache, runner, policies, seqs] = setup;
  auto job = runner.StartPrefill(seqs);
  ASSERT_TRUE(job.ok());
  EXPECT_DOUBLE_EQ(runner.NextChunkCost(*job), cost.SegmentLayerCost(50) + cost.SegmentLayerCost(30));
  // 80 rows fit one chunk: a chunk is a layer here. A budget of two layers runs exactly two.
  auto slice = runner.Advance(*job, 2 * runner.NextChunkCost(*job));
  ASSERT_TRUE(slice.ok());
  EXPECT_EQ(slice->num_chunks, 2);
  EXPECT_EQ(slice->num_layers_done, 2);
  EXPECT_EQ(slice->token_layers, 2 * 80);
  EXPECT_EQ(job->layer(), 2);
  EXPECT_TRUE(slice->done.empty());
  // A budget below one layer still runs one.
  slice = runner.Advance(*job, 1e-9);
  ASSERT_TRUE(slice.ok());
  EXPECT_EQ(slice->num_chunks, 1);
  // The rest in one call: every sequence finishes, with the slices it took.
  slice = runner.Advance(*job, 0);
  ASSERT_TRUE(slice.ok());
  EXPECT_EQ(slice->num_chunks, 3);
  ASSERT_EQ(slice->done.size(), 3u);
  for (const auto& d : slice->done) EXPECT_EQ(d.num_slices, 3);
  EXPECT_EQ(slice->logits.size(0), 3);
  EXPECT_TRUE(job->done());
  EXPECT_EQ(runner.NextChunkCost(*job), 0);
}

TEST(TinyPrefillSlices, DroppedSequenceLeavesTheOthersTheirResults) {
  auto m = TinyModel();
  const int L = 6;
  std::vector<std::vector<int32_t>> prompts = {Prompt(90, 1, 512), Prompt(70, 2, 512), Prompt(90, 1, 512)};
  std::vector<PruningParams> params(3);
  for (PruningParams& p : params) {
    p.policy = PolicyKind::kAsl;
    p.window = 8;
    p.kernel = 3;
    p.obs_layers = 2;
    p.min_layer = 2;
    p.select_k = 40;
    p.kv_budget = 32;
    p.max_layer = 3;
    ASSERT_TRUE(ResolvePruningParams(&p, L).ok());
  }
  // Alone, without the sequence that will be dropped (seq 1).
  const BatchOutcome without = RunBatch(*m, {prompts[0], prompts[2]}, {params[0], params[2]}, 0, {});

  PrefillSetup setup(*m, prompts, params);
  auto& [cache, runner, policies, seqs] = setup;
  auto job = runner.StartPrefill(seqs);
  ASSERT_TRUE(job.ok());
  auto slice = runner.Advance(*job, 1e-9);  // layer 0
  ASSERT_TRUE(slice.ok());
  slice = runner.Advance(*job, 1e-9);  // layer 1
  ASSERT_TRUE(slice.ok());
  EXPECT_EQ(job->members(), (std::vector<kv::SeqId>{0, 1, 2}));
  policies[1].reset();  // its owner is gone (a cancel): the job must never touch it again
  slice = runner.Advance(*job, 0, [](kv::SeqId id) { return id != 1; });
  ASSERT_TRUE(slice.ok());
  EXPECT_TRUE(job->done());
  ASSERT_EQ(slice->done.size(), 2u);
  EXPECT_EQ(cache.Length(1, 1), 32);  // what it wrote before it left stays, the caller's to free
  EXPECT_EQ(cache.Length(1, 2), 0);
  for (size_t j = 0; j < 2; ++j) {
    const size_t i = slice->done[j].index;
    ASSERT_NE(i, 1u);
    const Outcome& want = without.seqs[i == 0 ? 0 : 1];
    EXPECT_EQ(policies[i]->report().selection_layer, want.report.selection_layer);
    EXPECT_EQ(policies[i]->report().selected_positions, want.report.selected_positions);
    EXPECT_TRUE(at::allclose(slice->logits[static_cast<int64_t>(j)], want.logits, 1e-4, 1e-4));
    for (int l = 0; l < L; ++l) EXPECT_EQ(cache.Length(static_cast<kv::SeqId>(i), l), want.kv[l].first.size(1));
  }
  // Everyone gone: the job is done without running anything.
  auto job2 = runner.StartPrefill(seqs);
  ASSERT_TRUE(job2.ok());
  slice = runner.Advance(*job2, 0, [](kv::SeqId) { return false; });
  ASSERT_TRUE(slice.ok());
  EXPECT_EQ(slice->num_chunks, 0);
  EXPECT_TRUE(slice->done.empty());
  EXPECT_TRUE(job2->done());
}

// A sequence dropped in the middle of a layer, at every chunk of the first layers: when the rows
// still to come in that layer were all the dropped sequence's, the layer has nothing left to
// compute but its end (the soak found this: `torch.cat(): expected a non-empty list of Tensors`
// from a chunk of no rows, failing the whole batch). The survivor gets what it gets alone.
TEST(TinyPrefillSlices, DroppedInTheMiddleOfALayerAtEveryChunk) {
  auto m = TinyModel();
  const int L = static_cast<int>(m->config().num_layers);
  const std::vector<std::vector<int32_t>> prompts = {Prompt(40, 1, 512), Prompt(90, 2, 512)};
  std::vector<PruningParams> params(2);
  params[0].policy = PolicyKind::kAsl;
  params[0].max_layer = 3;  // forced selection: the survivor's batch is cut too
  params[1].policy = PolicyKind::kGemFilter;
  for (PruningParams& p : params) {
    p.window = 8;
    p.kernel = 3;
    p.obs_layers = 2;
    p.min_layer = 2;
    p.select_k = 24;
    p.kv_budget = 20;
    ASSERT_TRUE(ResolvePruningParams(&p, L).ok());
  }
  for (size_t dropped : {size_t{1}, size_t{0}}) {
    const size_t kept = 1 - dropped;
    const BatchOutcome alone = RunBatch(*m, {prompts[kept]}, {params[kept]}, 0, {});
    for (int64_t chunk_rows : {20, 40, 50}) {
      for (int chunks_before = 1; chunks_before <= 8; ++chunks_before) {
        SCOPED_TRACE("dropped " + std::to_string(dropped) + ", chunk_rows " + std::to_string(chunk_rows) +
                     ", after " + std::to_string(chunks_before) + " chunks");
        PrefillSetup setup(*m, prompts, params, {.chunk_rows = chunk_rows});
        auto& [cache, runner, policies, seqs] = setup;
        auto job = runner.StartPrefill(seqs);
        ASSERT_TRUE(job.ok());
        for (int c = 0; c < chunks_before && !job->done(); ++c) {
          auto slice = runner.Advance(*job, 1e-9);  // one chunk each
          ASSERT_TRUE(slice.ok()) << slice.status().ToString();
          ASSERT_TRUE(slice->done.empty());
        }
        policies[dropped].reset();
        auto slice = runner.Advance(*job, 0, [&](kv::SeqId id) { return id != static_cast<kv::SeqId>(dropped); });
        ASSERT_TRUE(slice.ok()) << slice.status().ToString();
        EXPECT_TRUE(job->done());
        ASSERT_EQ(slice->done.size(), 1u);
        ASSERT_EQ(slice->done[0].index, kept);
        const Outcome& want = alone.seqs[0];
        EXPECT_EQ(slice->done[0].next_position, want.next_position);
        EXPECT_EQ(policies[kept]->report().selection_layer, want.report.selection_layer);
        EXPECT_EQ(policies[kept]->report().selected_positions, want.report.selected_positions);
        EXPECT_TRUE(at::allclose(slice->logits[0], want.logits, 1e-4, 1e-4));
        for (int l = 0; l < L; ++l) {
          EXPECT_EQ(cache.Length(static_cast<kv::SeqId>(kept), l), want.kv[l].first.size(1)) << "layer " << l;
        }
      }
    }
  }
}

// The same on the default model (SmolLM2-135M, 30 layers), label model.
TEST(PrefillSlices, SlicedEqualsUnslicedForEveryPolicyOnTheDefaultModel) {
  if (!std::filesystem::exists(ASL_TEST_MODEL)) GTEST_SKIP() << "default model missing: " << ASL_TEST_MODEL;
  auto loaded = model::LoadModel(ASL_TEST_MODEL, at::kCPU, at::kFloat);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  model::LlamaModel m(loaded->config, std::move(loaded->weights));
  std::vector<std::vector<int32_t>> prompts;
  std::vector<PruningParams> params;
  MixedBatch(/*base_len=*/200, 20000, /*select_k=*/128, /*kv_budget=*/96, /*obs_layers=*/8, /*min_layer=*/-1,
             /*max_layer=*/20, &prompts, &params);
  // Chunks of 256 rows: the shared prompt's segment and its neighbours span chunks.
  ExpectSlicingChangesNothing(m, prompts, params, runner::PrefillOptions{256});
}

}  // namespace
}  // namespace asl

// PruningPolicy: the per-request state machine of asl-method.md §3-§7. The runner asks it, after
// each prefill layer's attention inputs are known, what the layer stores and whether the sequence
// is cut now. One object per request; it never sees other sequences, which is what makes a
// sequence's outcome independent of its batch-mates (§8).
//
// Thread: engine thread only.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <vector>

#include "engine/prune/scoring.h"
#include "engine/request.h"

namespace asl::prune {

// What one layer of one sequence does.
struct LayerPlan {
  // [Hkv, C] indices into the layer's current tokens to store per KV head; undefined = store all.
  at::Tensor kv_keep;
  // [k] sorted indices of the current tokens that deeper layers see; undefined = no cut here.
  at::Tensor select;
  // Two-pass policies: pass 1 ends after this layer; `select` holds the tokens for pass 2.
  bool end_pass = false;
};

// What a layer needs computed for this sequence before OnLayer can decide.
struct ScoreNeeds {
  bool window_scores = false;  // PooledWindowScores (§2)
  bool gem_scores = false;     // GemFilterScores (§7)
};

class PruningPolicy {
 public:
  // params must have been resolved (ResolvePruningParams). n: prompt tokens.
  PruningPolicy(const PruningParams& params, int num_layers, int64_t num_kv_heads, int64_t num_prompt_tokens);

  const PruningParams& params() const { return params_; }
  // True while running pass 1 of a two-pass policy (gemfilter, asl_2pass): no KV is stored.
  bool in_first_pass() const { return first_pass_; }
  // Switches a two-pass policy to pass 2 over `num_tokens` re-indexed tokens (full KV).
  void BeginSecondPass(int64_t num_tokens);

  // q: tokens this sequence holds at `layer`.
  ScoreNeeds Needs(int layer, int64_t q) const;
  // Decides the layer. pooled: PooledWindowScores [H, N] when Needs().window_scores, else undefined;
  // gem: GemFilterScores [q] when Needs().gem_scores.
  LayerPlan OnLayer(int layer, int64_t q, const at::Tensor& pooled, const at::Tensor& gem);

  // The report so far (selection layer, outcome, propagated tokens, variance ratios).
  const PruningReport& report() const { return report_; }
  PruningReport& mutable_report() { return report_; }

 private:
  bool UsesRankTest() const;
  bool KvBudgetApplies(int64_t q) const;
  LayerPlan Select(int layer, int64_t q, const at::Tensor& order, SelectionOutcome outcome);

  PruningParams params_;
  int num_layers_;
  int64_t num_kv_heads_;
  int64_t n_;
  bool first_pass_ = false;
  bool selected_ = false;
  std::optional<double> v0_;
  RankVarianceTest ranks_;
  PruningReport report_;
};

}  // namespace asl::prune

namespace asl::prune {
// Upper bound of the KV tokens one layer of a request stores after its prefill, given its
// resolved policy (asl-method.md §5, §7). The scheduler admits by this.
int64_t KvTokensUpperBound(const PruningParams& params, int layer, int64_t num_prompt_tokens);
// The fewest prompt tokens a prefill must compute, at the prompt's end, for the policy to decide
// exactly when the rest comes from the prefix cache: the window queries (§2) for every policy
// that scores, the last token (its logits) for full.
int64_t MinComputedTokens(const PruningParams& params);
// Whether the policy stores every layer's prompt KV uncompressed (its tables can share cached blocks
// from admission).
inline bool StoresWholePrompt(const PruningParams& params) { return params.policy == PolicyKind::kFull; }
// KvTokensUpperBound of every layer (what sched::BlockAccounting::Bounds takes).
std::vector<int64_t> KvTokensUpperBounds(const PruningParams& params, int num_layers, int64_t num_prompt_tokens);
}  // namespace asl::prune

#include "engine/prune/policy.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace asl::prune {

PruningPolicy::PruningPolicy(const PruningParams& params, int num_layers, int64_t num_kv_heads,
                             int64_t num_prompt_tokens)
    : params_(params),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      n_(num_prompt_tokens),
      ranks_(params.obs_layers) {
  const bool two_pass = Policy(params.policy).two_pass;
  // Nothing to prune when the prompt fits in select_k: a two-pass policy is then one full pass.
  first_pass_ = two_pass && n_ > params.select_k;
  report_.policy = params.policy;
  report_.num_prompt_tokens = n_;
  report_.num_propagated_tokens = n_;
  report_.outcome = Policy(params.policy).selects ? SelectionOutcome::kNone : SelectionOutcome::kNotApplicable;
}

void PruningPolicy::BeginSecondPass(int64_t num_tokens) {
  first_pass_ = false;
  report_.num_propagated_tokens = num_tokens;
}

bool PruningPolicy::UsesRankTest() const {
  const PolicyInfo& policy = Policy(params_.policy);
  return policy.rank_test && (!policy.two_pass || first_pass_);
}

bool PruningPolicy::KvBudgetApplies(int64_t q) const {
  // Two-pass policies keep full KV in pass 2 (§7) and store nothing in pass 1.
  if (params_.policy == PolicyKind::kFull || Policy(params_.policy).two_pass) return false;
  return params_.kv_budget > 0 && q > params_.kv_budget;
}

ScoreNeeds PruningPolicy::Needs(int layer, int64_t q) const {
  ScoreNeeds needs;
  const int64_t W = params_.window;
  if (q <= W) return needs;
  if (KvBudgetApplies(q)) needs.window_scores = true;
  if (!selected_ && n_ > params_.select_k) {
    if (UsesRankTest() && layer >= params_.min_layer - params_.obs_layers + 1) needs.window_scores = true;
    if (params_.policy == PolicyKind::kFastKv && layer == params_.select_layer) needs.window_scores = true;
    if (params_.policy == PolicyKind::kGemFilter && first_pass_ && layer == params_.select_layer) {
      needs.gem_scores = true;
    }
  }
  return needs;
}

LayerPlan PruningPolicy::Select(int layer, int64_t q, const at::Tensor& order, SelectionOutcome outcome) {
  const int64_t W = params_.window, N = q - W;
  const int64_t k = std::min<int64_t>(params_.select_k - W, N);
  LayerPlan plan;
  plan.select = KeptSet(order, k, N, W);
  plan.end_pass = first_pass_;
  selected_ = true;
  report_.outcome = outcome;
  report_.selection_layer = layer;
  report_.num_propagated_tokens = plan.select.size(0);
  return plan;
}

LayerPlan PruningPolicy::OnLayer(int layer, int64_t q, const at::Tensor& pooled, const at::Tensor& gem) {
  LayerPlan plan;
  const int64_t W = params_.window;
  report_.prefill_token_layers += q;
  if (pooled.defined() && KvBudgetApplies(q)) {
    plan.kv_keep = SnapKvKeep(KvHeadScores(pooled, num_kv_heads_), params_.kv_budget, W);
  }
  if (selected_ || n_ <= params_.select_k || q <= W) return plan;

  if (params_.policy == PolicyKind::kGemFilter) {
    if (first_pass_ && layer == params_.select_layer && gem.defined()) {
      at::Tensor top = DescendingOrder(gem).narrow(0, 0, std::min<int64_t>(params_.select_k, q));
      plan.select = std::get<0>(at::sort(top, std::optional<bool>(true), -1, false));
      plan.end_pass = true;
      selected_ = true;
      report_.outcome = SelectionOutcome::kSelected;
      report_.selection_layer = layer;
      report_.num_propagated_tokens = plan.select.size(0);
    }
    return plan;
  }
  if (params_.policy == PolicyKind::kFastKv) {
    if (layer == params_.select_layer && pooled.defined()) {
      LayerPlan sel = Select(layer, q, DescendingOrder(TokenScores(pooled)), SelectionOutcome::kSelected);
      plan.select = sel.select;
    }
    return plan;
  }
  if (!UsesRankTest() || !pooled.defined()) return plan;

  // ASL (§3): rank this layer, then from L_min on test the relative variance of the recent ranks.
  at::Tensor scores = TokenScores(pooled);
  ranks_.Push(Ranks(scores));
  auto select_now = [&](SelectionOutcome outcome) {
    LayerPlan sel = Select(layer, q, DescendingOrder(scores), outcome);
    plan.select = sel.select;
    plan.end_pass = sel.end_pass;
  };
  if (layer >= params_.min_layer && ranks_.full()) {
    const int64_t k = std::min<int64_t>(params_.select_k - W, q - W);
    const double v = ranks_.MeanRankVariance(k);
    if (!v0_) {
      v0_ = v;  // the first evaluated layer only sets the reference: no selection there
      report_.variance_ratios.push_back(1.0);
    } else {
      const double ratio = *v0_ == 0.0 ? 0.0 : v / *v0_;
      report_.variance_ratios.push_back(ratio);
      if (ratio < params_.tau) {
        select_now(SelectionOutcome::kSelected);
        return plan;
      }
    }
  }
  if (layer == params_.max_layer) {
    select_now(SelectionOutcome::kForced);
  } else if (first_pass_ && layer == num_layers_ - 1) {
    // asl_2pass when τ is never reached: pass 2 uses the last layer's ranks (§7).
    select_now(SelectionOutcome::kForced);
  }
  return plan;
}

}  // namespace asl::prune

namespace asl::prune {

int64_t KvTokensUpperBound(const PruningParams& p, int layer, int64_t n) {
  const int64_t budget = p.kv_budget > 0 ? std::min<int64_t>(n, p.kv_budget) : n;
  const int64_t k = std::min<int64_t>(n, p.select_k);
  switch (p.policy) {
    case PolicyKind::kFull: return n;
    case PolicyKind::kSnapKv: return budget;
    // Selection may not happen: only the budget bounds it, unless max_layer forces it.
    case PolicyKind::kAsl: return p.max_layer >= 0 && layer > p.max_layer ? std::min(budget, k) : budget;
    case PolicyKind::kFastKv: return layer > p.select_layer ? std::min(budget, k) : budget;
    case PolicyKind::kGemFilter:
    case PolicyKind::kAsl2Pass: return k;  // pass 2 holds full KV of at most select_k tokens
  }
  return n;
}

int64_t MinComputedTokens(const PruningParams& p) {
  return p.policy == PolicyKind::kFull ? 1 : std::max<int64_t>(1, p.window);
}

std::vector<int64_t> KvTokensUpperBounds(const PruningParams& p, int num_layers, int64_t n) {
  std::vector<int64_t> tokens;
  for (int l = 0; l < num_layers; ++l) tokens.push_back(KvTokensUpperBound(p, l, n));
  return tokens;
}

}  // namespace asl::prune

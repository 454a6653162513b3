// Parameter validation for requests (asl-method.md §1, §7). Errors name the parameter.
#include <cmath>

#include "engine/request.h"

namespace asl {

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
    case FinishReason::kAbort: return "abort";
  }
  return "unknown";
}

const char* SelectionOutcomeName(SelectionOutcome o) {
  switch (o) {
    case SelectionOutcome::kNone: return "none";
    case SelectionOutcome::kSelected: return "selected";
    case SelectionOutcome::kForced: return "forced";
    case SelectionOutcome::kNotApplicable: return "n/a";
  }
  return "unknown";
}

static int ScaleLayer(int num_layers, int of32) {
  return static_cast<int>(std::lround(static_cast<double>(num_layers) * of32 / 32.0));
}

Status ResolvePruningParams(PruningParams* p, int num_layers) {
  const int L = num_layers;
  if (p->min_layer < 0) {
    p->min_layer = ScaleLayer(L, 10);
    // A shallow model cannot look back 8 layers from a scaled L_min: the window shrinks with it
    // (L_min >= L_obs - 1 must hold). Explicit min_layer values are validated as given.
    if (p->obs_layers > p->min_layer + 1) p->obs_layers = p->min_layer + 1;
  }
  if (p->select_layer < 0) {
    p->select_layer = p->policy == PolicyKind::kGemFilter ? ScaleLayer(L, 13) : ScaleLayer(L, 15);
  }
  auto bad = [](const std::string& name, const std::string& why) {
    return InvalidArgument("pruning." + name + ": " + why);
  };
  if (p->window < 1) return bad("window", "must be >= 1, got " + std::to_string(p->window));
  if (p->kernel < 1 || p->kernel % 2 == 0) return bad("kernel", "must be a positive odd number, got " + std::to_string(p->kernel));
  if (!(p->tau > 0.0) || !std::isfinite(p->tau)) return bad("tau", "must be > 0");
  if (p->select_k <= p->window) return bad("select_k", "must be > window (" + std::to_string(p->window) + "), got " + std::to_string(p->select_k));
  if (p->kv_budget < 0) return bad("kv_budget", "must be >= 0 (0 = no budget), got " + std::to_string(p->kv_budget));
  if (p->kv_budget != 0 && p->kv_budget <= p->window) return bad("kv_budget", "must be > window (" + std::to_string(p->window) + ") or 0, got " + std::to_string(p->kv_budget));
  if (p->obs_layers < 1) return bad("obs_layers", "must be >= 1, got " + std::to_string(p->obs_layers));
  if (p->min_layer >= L) return bad("min_layer", "must be < the number of layers (" + std::to_string(L) + "), got " + std::to_string(p->min_layer));
  if (p->min_layer < p->obs_layers - 1) return bad("min_layer", "must be >= obs_layers - 1 (" + std::to_string(p->obs_layers - 1) + "), got " + std::to_string(p->min_layer));
  if (p->max_layer >= L) return bad("max_layer", "must be < the number of layers (" + std::to_string(L) + "), got " + std::to_string(p->max_layer));
  if (p->max_layer >= 0 && p->max_layer <= p->min_layer) return bad("max_layer", "must be > min_layer (" + std::to_string(p->min_layer) + ") or -1, got " + std::to_string(p->max_layer));
  if (p->select_layer >= L) return bad("select_layer", "must be < the number of layers (" + std::to_string(L) + "), got " + std::to_string(p->select_layer));
  return Status::Ok();
}

}  // namespace asl

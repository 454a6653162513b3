// The accuracy benchmark's run loop: builds each (length, task) cell's samples when the cell comes
// up, submits every sample under every policy and budget to one Engine with up to `batch` requests
// in flight (a sample's requests together, so the runner shares their prompt's rows), scores what comes back, and prints one progress line per finished cell to stderr.
// Needs only engine.h: the prompts come from the SampleBuilder, so tests drive it with a fake engine.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "tools/eval/report.h"
#include "tools/eval/tasks.h"

namespace asl::eval {

struct RunPlan {
  std::vector<std::string> tasks;  // RULER task names and/or kNiahGrid
  std::vector<PolicyKind> policies;
  std::vector<int> lengths;
  std::vector<int> budgets;        // kv_budget = select_k = B; full runs once per sample
  int samples = 20;
  std::vector<double> niah_depths;
  int niah_samples = 1;
  int batch = 8;                   // requests in flight (a whole sample at least)
  double limit_seconds = 0;        // 0 = none
  PruningParams base;              // window, kernel, tau, ... shared by every request
  // Results of an earlier run of the same samples (same seed, model and data; --resume): requests of
  // this plan found here are not run again, and the output carries them (failed ones are rerun).
  std::vector<RunResult> prior;
};

struct RunOutput {
  std::vector<RunResult> results;  // cancelled requests are left out
  int64_t requests_planned = 0;    // including the ones carried over from RunPlan::prior
  int64_t requests_done = 0;
  int64_t requests_resumed = 0;    // carried over from RunPlan::prior
  bool partial = false;            // stopped by limit_seconds
  double wall_seconds = 0.0;
  std::vector<std::string> notes;  // cells skipped because their samples could not be built
};

// The pruning parameters of one request.
PruningParams RequestPruning(const PruningParams& base, PolicyKind policy, int budget);

// Runs the plan. Thread: the caller's; the engine calls the sinks on its own thread.
RunOutput RunBenchmark(Engine& engine, SampleBuilder& builder, const RunPlan& plan);

}  // namespace asl::eval

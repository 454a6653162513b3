// The accuracy benchmark's results and their two renderings: every request as JSON, and the
// markdown tables of benchmarks.md §A (per length and budget: tasks x policies, the average, asl's
// selection layers, KV kept and prefill time; the NIAH grid per policy).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "engine/common/status.h"
#include "engine/request.h"

namespace asl::eval {

// One request: one sample under one policy and budget.
struct RunResult {
  std::string task;
  int length = 0;
  int index = 0;
  double depth_percent = -1.0;  // NIAH grid only
  int64_t haystack_size = 0;
  std::string policy;
  int budget = 0;               // kv_budget = select_k; 0 for full (run once, shown under every budget)
  std::vector<std::string> answers;
  std::string output;
  double score = 0.0;           // [0, 1]
  std::string finish_reason;
  std::string error;            // non-empty when the request failed (scored 0)
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double ttft_seconds = 0.0;
  double e2e_seconds = 0.0;
  PruningReport pruning;
};

struct ReportMeta {
  std::string date;        // UTC, ISO 8601
  std::string commit;
  std::string machine;
  std::string command;
  std::string model;       // name, path, layers
  std::string engine;      // device, dtype, threads, KV pool
  std::vector<int> lengths;
  std::vector<int> budgets;
  std::vector<std::string> policies;
  std::vector<std::string> tasks;  // RULER tasks in order, then "niah" when the grid ran
  std::vector<double> niah_depths;
  int samples = 0;
  int niah_samples = 0;
  uint64_t seed = 0;
  double wall_seconds = 0.0;
  int64_t requests_planned = 0;
  int64_t requests_done = 0;
  bool partial = false;    // stopped by --limit-seconds
  std::vector<std::string> notes;  // skipped cells and the like
};

// "none", "n/a", "forced@L" or the layer number.
std::string SelectionLabel(const PruningReport& r);

nlohmann::json ResultJson(const RunResult& r);
// The inverse of ResultJson for the fields a report needs (for --resume); an error names the field.
StatusOr<RunResult> ResultFromJson(const nlohmann::json& j);
// The key that identifies one request of a plan: task, length, sample index, NIAH depth, policy, budget.
std::string ResultKey(const std::string& task, int length, int index, double depth_percent,
                      const std::string& policy, int budget);
nlohmann::json ReportJson(const ReportMeta& meta, const std::vector<RunResult>& results);
// The JSON file of a run: written gzip-compressed when `path` ends in ".gz" (per-request raw data
// compresses ~10x), plain otherwise; read from either (zlib reads plain files as they are).
Status WriteJsonFile(const std::string& path, const nlohmann::json& j);
StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);
std::string ReportMarkdown(const ReportMeta& meta, const std::vector<RunResult>& results);

// Machine facts for the report header: CPU model, cores, memory (Linux /proc), and the git commit of
// the working directory ("unknown" when not a checkout).
std::string MachineDescription();
std::string GitCommit();
std::string UtcNow();
// This process's command line (/proc/self/cmdline), shell-quoted where needed.
std::string CommandLine();

}  // namespace asl::eval

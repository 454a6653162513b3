// Options and JSON helpers shared by asl-cli's subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/tokenizer/tokenizer.h"

namespace asl::cli {

// Model, device and engine knobs plus the pruning knobs of asl-method.md §1.
struct CommonOptions {
  std::string model_path = ASL_DEFAULT_MODEL_PATH;
  std::string device = "cpu";
  std::string dtype = "float32";
  std::string kv_dtype = "auto";
  std::string decode_activations = "float32";
  int threads = 0;
  std::string kv_cache = "1GiB";
  int block_size = 16;
  double step_prefill_budget = EngineConfig{}.step_prefill_budget;
  std::string log_level = "warn";
  std::string policy = PolicyName(PruningParams{}.policy);    // --policy, parsed by Finalize
  std::string pooling = PoolingName(PruningParams{}.pooling);  // --pooling, parsed by Finalize
  std::string admission = "reserve";  // scheduler admission: reserve or optimistic
  PruningParams pruning;                // the numeric knobs' flags write here directly
  std::string chat_template;  // --chat-template: chatml, llama3 or a Jinja file; empty: the model's

  // Model and engine flags, then one flag per pruning knob (engine/common/pruning_knobs.h).
  void Register(CLI::App* app);
  EngineConfig ToEngineConfig() const;
  // Applies the policy and pooling names to `pruning` (validated later by the engine).
  Status Finalize();
};

// Where the prompt comes from: text, chat messages (JSON), or token ids.
struct PromptOptions {
  std::string prompt;
  std::string prompt_file;
  std::string chat;          // JSON: [{"role": "user", "content": "..."}] or a path to such a file
  std::string ids;           // comma-separated token ids
  bool no_bos = false;

  void Register(CLI::App* app);
  StatusOr<std::vector<TokenId>> Resolve(const tok::Tokenizer& tokenizer) const;
};

// asl-cli eval (tools/eval/): the accuracy benchmark of benchmarks.md §A.
struct EvalOptions {
  std::string data_dir;                  // empty: ASL_DEFAULT_DATA_DIR
  std::string out_prefix = "bench/out/accuracy";
  std::vector<std::string> tasks;        // empty: the 11 RULER tasks, plus "niah" (the grid)
  std::vector<std::string> policies = TableNames(kPolicies);  // default: every policy
  std::vector<int> lengths = {1024, 2048, 4096};
  std::vector<int> budgets = {256, 512, 1024};
  int samples = 20;                      // per RULER task and length
  int niah_depths = 10;
  int niah_samples = 1;                  // per grid length and depth; 0 = no grid
  uint64_t seed = 42;
  int batch = 8;                         // requests in flight
  double limit_seconds = 0;              // 0 = no limit; else stop, cancel and write a partial report
  bool dry_run = false;                  // build the samples only (<out>.samples.json)
  std::string resume;                    // an earlier <out>.json whose requests are carried over
  void Register(CLI::App* app);
};

struct ThroughputOptions {
  int prompt_tokens = 4096;
  int max_tokens = 32;
  std::string concurrency = "1,4,16,32";
  std::string policies = "full,snapkv,asl";
  int budget = 512;
  int max_num_seqs = 32;
  std::string data_dir = ASL_DEFAULT_DATA_DIR;
  std::string out;
  void Register(CLI::App* app);
};

inline std::string fmt_double(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", v);
  return buf;
}

// The model's tokenizer without its weights; `chat_template` (optional) overrides its template.
StatusOr<std::unique_ptr<tok::Tokenizer>> LoadTokenizerOnly(const std::string& model_path,
                                                             const std::string& chat_template = "");
nlohmann::json PruningJson(const PruningReport& r);
nlohmann::json TimingsJson(const Timings& t);
nlohmann::json UsageJson(const FinishEvent& ev);

int RunLogits(CommonOptions& o, const PromptOptions& p, bool json_out);
int RunEval(CommonOptions& o, const EvalOptions& e);
int RunThroughput(CommonOptions& o, const ThroughputOptions& t);

}  // namespace asl::cli

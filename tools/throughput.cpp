// asl-cli throughput: with one fixed KV pool, how many long-prompt requests run at once and how many
// output tokens/s the engine delivers at several concurrencies, per policy (issue 4's benchmark).
// Every request of a cell is submitted at once; the peak of Engine::Stats().num_running is sampled.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "engine/prune/policy.h"
#include "engine/sched/block_accounting.h"
#include "tools/cli_common.h"

namespace asl::cli {
namespace {

class CountSink : public RequestSink {
 public:
  CountSink(std::mutex* mu, std::condition_variable* cv, int* pending) : mu_(mu), cv_(cv), pending_(pending) {}
  void OnTokens(const TokenChunk& c) override { tokens += static_cast<int64_t>(c.token_ids.size()); }
  void OnFinish(const FinishEvent& ev) override {
    finish = ev;
    std::lock_guard<std::mutex> lock(*mu_);
    --*pending_;
    cv_->notify_all();
  }
  int64_t tokens = 0;
  FinishEvent finish;

 private:
  std::mutex* mu_;
  std::condition_variable* cv_;
  int* pending_;
};

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoi(item));
  return out;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

}  // namespace

void ThroughputOptions::Register(CLI::App* app) {
  app->add_option("--prompt-tokens", prompt_tokens, "prompt length of every request")->capture_default_str();
  app->add_option("--max-tokens", max_tokens, "output tokens per request")->capture_default_str();
  app->add_option("--concurrency", concurrency, "comma-separated request counts submitted at once")->capture_default_str();
  app->add_option("--policies", policies, "comma-separated policies")->capture_default_str();
  app->add_option("--budget", budget, "kv_budget = select_k for pruning policies")->capture_default_str();
  app->add_option("--max-num-seqs", max_num_seqs, "scheduler limit on running sequences")->capture_default_str();
  app->add_option("--data-dir", data_dir, "essays for the prompts")->capture_default_str();
  app->add_option("--out", out, "markdown file to write (also printed)");
}

int RunThroughput(CommonOptions& o, const ThroughputOptions& t) {
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "asl-cli: %s\n", st.ToString().c_str());
    return 1;
  };
  std::string text;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(t.data_dir + "/pg-essays")) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::ifstream in(f);
    text.append(std::istreambuf_iterator<char>(in), {});
    text += "\n";
  }
  std::ostringstream md;
  std::string header;
  md << "| policy | concurrency | admission blocks / request | fit in pool (computed) | peak running (measured) | "
        "wall s | output tok/s | mean TTFT s | mean TPOT ms | KV tokens kept / request | preemptions |\n"
     << "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const std::string& policy_name : Split(t.policies)) {
    CommonOptions opts = o;
    opts.policy = policy_name;
    Status st = opts.Finalize();
    if (!st.ok()) return fail(st);
    if (opts.pruning.policy != PolicyKind::kFull) {
      opts.pruning.kv_budget = t.budget;
      opts.pruning.select_k = t.budget;
    } else {
      opts.pruning.kv_budget = 0;
    }
    EngineConfig config = opts.ToEngineConfig();
    config.max_num_seqs = t.max_num_seqs;
    config.max_prefill_tokens = t.prompt_tokens * 4;
    auto engine_or = Engine::Create(config);
    if (!engine_or.ok()) return fail(engine_or.status());
    std::unique_ptr<Engine> engine = std::move(engine_or).value();
    std::vector<TokenId> all = engine->tokenizer().Encode(text, false);
    const ModelInfo& info = engine->model_info();
    PruningParams resolved = opts.pruning;
    if (!ResolvePruningParams(&resolved, static_cast<int>(info.num_layers)).ok()) return fail(InvalidArgument("bad pruning"));
    const sched::BlockAccounting accounting(static_cast<int>(info.num_layers), static_cast<int>(info.kv_block_size),
                                            /*pool=*/nullptr);
    const int64_t admission =
        accounting.Bounds(prune::KvTokensUpperBounds(resolved, static_cast<int>(info.num_layers), t.prompt_tokens), 0)
            .prompt + info.num_layers;
    for (int c : ParseList(t.concurrency)) {
      std::mutex mu;
      std::condition_variable cv;
      int pending = c;
      std::vector<std::shared_ptr<CountSink>> sinks;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < c; ++i) {
        GenerateRequest r;
        const size_t start = (static_cast<size_t>(i) * 977) % (all.size() - t.prompt_tokens);
        r.prompt_ids.assign(all.begin() + start, all.begin() + start + t.prompt_tokens);
        r.sampling.max_tokens = t.max_tokens;
        r.sampling.ignore_eos = true;
        r.pruning = opts.pruning;
        sinks.push_back(std::make_shared<CountSink>(&mu, &cv, &pending));
        auto id = engine->Submit(r, sinks.back());
        if (!id.ok()) return fail(id.status());
      }
      int64_t peak = 0;
      {
        std::unique_lock<std::mutex> lock(mu);
        while (pending > 0) {
          cv.wait_for(lock, std::chrono::milliseconds(5));
          peak = std::max(peak, engine->Stats().num_running);
        }
      }
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      int64_t tokens = 0, kept = 0, preempt = 0;
      double ttft = 0, tpot = 0;
      for (const auto& s : sinks) {
        tokens += s->tokens;
        kept += s->finish.usage.kv_tokens_kept;
        preempt += s->finish.num_preemptions;
        ttft += s->finish.timings.ttft_seconds;
        tpot += s->finish.timings.mean_tpot_seconds;
      }
      md << "| " << policy_name << " | " << c << " | " << admission << " | " << info.kv_blocks_total / admission << " | "
         << peak << " | " << fmt_double(wall) << " | " << fmt_double(tokens / wall) << " | " << fmt_double(ttft / c) << " | "
         << fmt_double(1000 * tpot / c) << " | " << kept / c << " | " << preempt << " |\n";
      std::fprintf(stderr, "[throughput] %s c=%d: peak running %lld, %.1f output tok/s, wall %.1fs\n", policy_name.c_str(), c,
                   static_cast<long long>(peak), tokens / wall, wall);
    }
    if (policy_name == Split(t.policies).front()) {
      header = "- KV pool: " + std::to_string(info.kv_blocks_total) + " blocks of " + std::to_string(info.kv_block_size) +
                   " tokens (" + std::to_string(info.kv_bytes_total / 1048576) + " MiB), model " + info.name + ", " +
                   std::to_string(info.num_layers) + " layers\n";
    }
    engine->Shutdown(false, std::chrono::milliseconds(0));
  }
  std::string report = header + "- prompt tokens " + std::to_string(t.prompt_tokens) + ", output tokens " +
                       std::to_string(t.max_tokens) + ", budget (kv_budget = select_k) " + std::to_string(t.budget) +
                       ", max_num_seqs " + std::to_string(t.max_num_seqs) +
                       ", admission " + o.admission + "\n\n" + md.str();
  std::cout << report;
  if (!t.out.empty()) std::ofstream(t.out) << report;
  return 0;
}

}  // namespace asl::cli

// asl-cli eval: the accuracy benchmark of benchmarks.md §A. Options, engine and tokenizer set-up, and
// the report files; the run loop is runner.cpp, the samples tasks.cpp.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "engine/tokenizer/chat_template.h"
#include "tools/cli_common.h"
#include "tools/eval/report.h"
#include "tools/eval/runner.h"
#include "tools/eval/tasks.h"

namespace asl::cli {

void EvalOptions::Register(CLI::App* app) {
  app->add_option("--data-dir", data_dir, "essays and word lists (default: <repo>/../shared/data)");
  app->add_option("--tasks", tasks, "subset of the RULER tasks, plus 'niah' for the needle grid (default: all)")
      ->delimiter(',');
  app->add_option("--policies", policies, "policies to compare")->delimiter(',')->capture_default_str();
  app->add_option("--lengths", lengths, "target context lengths in tokens (prompt + generation)")
      ->delimiter(',')->capture_default_str();
  app->add_option("--budgets", budgets, "budgets: kv_budget = select_k = B for every pruning policy")
      ->delimiter(',')->capture_default_str();
  app->add_option("--samples", samples, "samples per task and length")->capture_default_str();
  app->add_option("--niah-depths", niah_depths, "needle depths of the grid (0..100 % evenly)")->capture_default_str();
  app->add_option("--niah-samples", niah_samples, "grid samples per length and depth (0 = no grid)")->capture_default_str();
  app->add_option("--seed", seed, "sample generation seed")->capture_default_str();
  app->add_option("--batch", batch, "requests in flight; a sample's requests (its prompt under every policy and budget) are submitted together, so the engine computes the prompt once until the policies diverge")->capture_default_str();
  app->add_option("--out", out_prefix, "output prefix: writes <out>.json.gz (every request) and <out>.md (the tables)")->capture_default_str();
  app->add_option("--limit-seconds", limit_seconds, "stop after this long and write the partial report (0 = no limit)")
      ->capture_default_str();
  app->add_option("--resume", resume, "an earlier run's <out>.json.gz or .json (same seed and model): its requests are not run again")
      ->check(CLI::ExistingFile);
  app->add_flag("--dry-run", dry_run, "build and size every sample, write them to <out>.samples.json, run nothing");
}

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int Fail(const Status& st) {
  std::fprintf(stderr, "asl-cli eval: %s\n", st.ToString().c_str());
  return st.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace

int RunEval(CommonOptions& o, const EvalOptions& e) {
  // ---- options --------------------------------------------------------------------------------------
  std::vector<std::string> tasks = e.tasks;
  if (tasks.empty()) {
    for (const auto& t : eval::RulerTasks()) tasks.push_back(t.name);
    if (e.niah_samples > 0) tasks.push_back(eval::kNiahGrid);
  }
  for (const auto& t : tasks) {
    if (!eval::FindTask(t)) return Fail(InvalidArgument("--tasks: unknown task '" + t + "'"));
  }
  if (e.niah_samples <= 0) tasks.erase(std::remove(tasks.begin(), tasks.end(), eval::kNiahGrid), tasks.end());
  std::vector<std::pair<std::string, PolicyKind>> policies;
  for (const auto& p : e.policies) {
    auto kind = ParsePolicy(p);
    if (!kind) return Fail(InvalidArgument("--policies: unknown policy '" + p + "'"));
    policies.emplace_back(p, *kind);
  }
  for (int b : e.budgets) {
    if (b <= o.pruning.window) {
      return Fail(InvalidArgument("--budgets: " + std::to_string(b) + " must exceed the window (" +
                                  std::to_string(o.pruning.window) + ")"));
    }
  }
  if (e.samples < 1 || e.batch < 1 || e.niah_depths < 1 || e.lengths.empty() || e.budgets.empty() || policies.empty()) {
    return Fail(InvalidArgument("eval: --samples, --batch, --niah-depths, --lengths, --budgets and --policies must be non-empty/positive"));
  }
  const std::string data_dir = e.data_dir.empty() ? ASL_DEFAULT_DATA_DIR : e.data_dir;
  auto data = eval::LoadEvalData(data_dir);
  if (!data.ok()) return Fail(data.status());

  // ---- engine (a dry run needs only the tokenizer) ------------------------------------------------------
  const auto t_load = Clock::now();
  std::unique_ptr<Engine> engine;
  std::unique_ptr<tok::Tokenizer> own_tokenizer;
  const tok::Tokenizer* tokenizer = nullptr;
  if (e.dry_run) {
    auto t = LoadTokenizerOnly(o.model_path, o.chat_template);
    if (!t.ok()) return Fail(t.status());
    own_tokenizer = std::move(t).value();
    tokenizer = own_tokenizer.get();
  } else {
    auto engine_or = Engine::Create(o.ToEngineConfig());
    if (!engine_or.ok()) return Fail(engine_or.status());
    engine = std::move(engine_or).value();
    tokenizer = &engine->tokenizer();
    std::fprintf(stderr, "[eval] model %s (%lld layers) loaded in %.1f s\n", engine->model_info().name.c_str(),
                 static_cast<long long>(engine->model_info().num_layers), Since(t_load));
  }
  eval::SampleBuilder builder(*data, e.seed,
                              [&](const std::string& user, const std::string& prefix) -> StatusOr<std::vector<TokenId>> {
                                std::vector<tok::ChatMessage> messages{{.role = "user", .content = user}};
                                ASL_ASSIGN_OR_RETURN(tok::RenderedChat chat, tokenizer->ApplyChatTemplate(messages, {}));
                                // RULER's answer prefix follows the generation prompt directly.
                                chat.text += prefix;
                                return tokenizer->EncodeChat(chat);
                              });

  // ---- plan -----------------------------------------------------------------------------------------
  eval::RunPlan plan;
  plan.tasks = tasks;
  for (const auto& [name, kind] : policies) plan.policies.push_back(kind);
  plan.lengths = e.lengths;
  plan.budgets = e.budgets;
  plan.samples = e.samples;
  plan.niah_depths = eval::NiahDepths(e.niah_depths);
  plan.niah_samples = e.niah_samples;
  plan.batch = e.batch;
  plan.limit_seconds = e.limit_seconds;
  plan.base = o.pruning;

  if (e.dry_run) {
    const auto t_build = Clock::now();
    nlohmann::json out = nlohmann::json::array();
    const size_t nd = plan.niah_depths.size();
    for (int length : plan.lengths) {
      for (const auto& task : plan.tasks) {
        const bool grid = task == eval::kNiahGrid;
        const int n = grid ? static_cast<int>(nd) * e.niah_samples : e.samples;
        for (int i = 0; i < n; ++i) {
          auto s = grid ? builder.Build(task, length, i / static_cast<int>(nd), plan.niah_depths[i % nd])
                        : builder.Build(task, length, i);
          if (!s.ok()) return Fail(s.status());
          out.push_back({{"task", s->task}, {"length", s->length}, {"index", s->index},
                         {"depth_percent", s->depth_percent}, {"haystack_size", s->size},
                         {"prompt_tokens", s->prompt_ids.size()}, {"max_tokens", s->max_tokens},
                         {"user", s->text.user}, {"answer_prefix", s->text.answer_prefix}, {"answers", s->text.answers},
                         {"prompt_ids", s->prompt_ids}});
        }
        std::fprintf(stderr, "[eval] built %s at %d (%.1f s so far, %lld encodes)\n", task.c_str(), length,
                     Since(t_build), static_cast<long long>(builder.num_encodes()));
      }
    }
    std::filesystem::path dir = std::filesystem::path(e.out_prefix).parent_path();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);
    std::ofstream f(e.out_prefix + ".samples.json");
    f << out.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    std::fprintf(stderr, "[eval] wrote %zu samples to %s.samples.json\n", out.size(), e.out_prefix.c_str());
    return f ? 0 : 1;
  }

  const ModelInfo& info = engine->model_info();
  eval::ReportMeta meta;
  meta.date = eval::UtcNow();
  meta.commit = eval::GitCommit();
  meta.machine = eval::MachineDescription();
  meta.command = eval::CommandLine();
  meta.model = info.name + " (" + info.arch + ", " + std::to_string(info.num_layers) + " layers, " + info.path + ")";
  meta.engine = info.device + ", " + info.dtype + ", threads " + (o.threads ? std::to_string(o.threads) : "default") +
                ", KV pool " + o.kv_cache + ", batch " + std::to_string(e.batch);
  meta.lengths = e.lengths;
  meta.budgets = e.budgets;
  meta.policies = e.policies;
  meta.tasks = tasks;
  meta.niah_depths = plan.niah_depths;
  meta.samples = e.samples;
  meta.niah_samples = e.niah_samples;
  meta.seed = e.seed;

  if (!e.resume.empty()) {
    auto read = eval::ReadJsonFile(e.resume);
    if (!read.ok()) return Fail(InvalidArgument("--resume: " + read.status().message()));
    const nlohmann::json& prior = read.value();
    try {
      const auto& pm = prior.at("meta");
      if (pm.at("seed").get<uint64_t>() != e.seed) {
        return Fail(InvalidArgument("--resume: " + e.resume + " was made with seed " + pm.at("seed").dump()));
      }
      // The model's name, architecture and depth, not where this checkout keeps the file.
      const auto identity = [](const std::string& m) { return m.substr(0, m.find(" layers, ")); };
      if (identity(pm.at("model").get<std::string>()) != identity(meta.model)) {
        return Fail(InvalidArgument("--resume: " + e.resume + " was made with model " + pm.at("model").dump()));
      }
      for (const auto& r : prior.at("results")) {
        auto result = eval::ResultFromJson(r);
        if (!result.ok()) return Fail(InvalidArgument("--resume: " + e.resume + ": " + result.status().message()));
        plan.prior.push_back(std::move(result).value());
      }
      meta.notes.push_back("results carried over from " + e.resume + " (" + pm.at("command").get<std::string>() + ")");
    } catch (const nlohmann::json::exception& ex) {
      return Fail(InvalidArgument("--resume: " + e.resume + ": " + ex.what()));
    }
  }

  // ---- run ------------------------------------------------------------------------------------------
  eval::RunOutput run = eval::RunBenchmark(*engine, builder, plan);
  engine->Shutdown(false, std::chrono::milliseconds(0));
  meta.wall_seconds = run.wall_seconds;
  meta.requests_planned = run.requests_planned;
  meta.requests_done = run.requests_done;
  meta.partial = run.partial;
  meta.notes.insert(meta.notes.end(), run.notes.begin(), run.notes.end());
  if (run.requests_resumed > 0) {
    meta.notes.push_back(std::to_string(run.requests_resumed) + " of the " + std::to_string(run.requests_planned) +
                         " requests are carried over from --resume");
  }
  const std::vector<eval::RunResult>& results = run.results;

  // ---- report ---------------------------------------------------------------------------------------
  namespace fs = std::filesystem;
  const fs::path out(e.out_prefix);
  std::error_code ec;
  if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
  const std::string json_path = e.out_prefix + ".json.gz", md_path = e.out_prefix + ".md";
  if (Status st = eval::WriteJsonFile(json_path, eval::ReportJson(meta, results)); !st.ok()) {
    return Fail(Status(st.code(), "eval: " + st.message()));
  }
  std::ofstream mf(md_path);
  mf << eval::ReportMarkdown(meta, results);
  if (!mf) return Fail(NotFound("eval: cannot write " + md_path));
  std::fprintf(stderr, "[eval] %lld requests in %.0f s; wrote %s and %s\n", static_cast<long long>(run.requests_done),
               run.wall_seconds, json_path.c_str(), md_path.c_str());
  return 0;
}

}  // namespace asl::cli

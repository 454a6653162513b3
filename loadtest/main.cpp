// asl-loadtest: bounded load against asl-server's gRPC API, with latency percentiles, throughput
// and goodput (see load_generator.h and stats.h).
//
//   asl-loadtest --target 127.0.0.1:50051 --concurrency 4 --num-requests 32 --prompt-tokens 1024
//                --max-tokens 64 --policy asl --kv-budget 256 --select-k 256 --json out.json
#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "loadtest/load_generator.h"
#include "loadtest/prompts.h"
#include "loadtest/stats.h"

namespace {

using nlohmann::json;

template <typename T>
void SetIf(bool given, T value, void (asl::v1::PruningParams::*set)(T), asl::v1::PruningParams* p) {
  if (given) (p->*set)(value);
}

}  // namespace

int main(int argc, char** argv) {
  std::string target = "127.0.0.1:50051";
  asl::loadtest::LoadOptions load;
  asl::loadtest::PromptOptions prompt_options;
  asl::loadtest::Slo slo;
  int max_tokens = 64;
  double temperature = 0;
  bool ignore_eos = true;
  int warmup = 1;
  std::string json_path;
  std::string policy, pooling;
  int window = 0, kernel = 0, min_layer = 0, obs_layers = 0, select_k = 0, kv_budget = 0, max_layer = 0,
      select_layer = 0;
  double tau = 0;

  CLI::App app{"asl-loadtest: load generator and latency report for asl-server (gRPC)"};
  app.add_option("--target", target, "asl-server gRPC address, host:port")->capture_default_str();
  auto* conc = app.add_option("--concurrency", load.concurrency, "Closed loop: requests in flight")
                   ->capture_default_str()
                   ->check(CLI::Range(1, 1024));
  app.add_option("--rate", load.rate, "Open loop: Poisson arrivals, requests per second")
      ->check(CLI::PositiveNumber)
      ->excludes(conc);
  app.add_option("--num-requests", load.num_requests, "Requests to send (at most)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  app.add_option("--duration", load.duration_s, "Stop sending after this many seconds; 0 = no limit")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--timeout", load.timeout_s, "Deadline of each request in seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--prompt-file", prompt_options.file, "Prompts, one per line (default: built-in essay text)")
      ->check(CLI::ExistingFile);
  app.add_option("--prompt-tokens", prompt_options.num_tokens,
                 "Cut every prompt to exactly this many tokens (server's tokenizer); 0 = send texts as they are")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  app.add_option("--max-tokens", max_tokens, "Output tokens per request")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_flag("--ignore-eos,!--no-ignore-eos", ignore_eos, "Generate exactly --max-tokens (default on)");
  app.add_option("--temperature", temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  app.add_option("--seed", load.seed, "Seed of prompt offsets, arrivals and per-request sampling")->capture_default_str();
  app.add_option("--warmup", warmup, "Requests sent (one at a time) before measuring")->capture_default_str()->check(CLI::Range(0, 100));
  app.add_option("--policy", policy, "Pruning policy: full, snapkv, fastkv, gemfilter, asl, asl_2pass (default: server's)");
  auto* o_window = app.add_option("--window", window, "Pruning window W");
  auto* o_kernel = app.add_option("--kernel", kernel, "Pooling width S");
  app.add_option("--pooling", pooling, "Pooling: avg or max");
  auto* o_min_layer = app.add_option("--min-layer", min_layer, "L_min");
  auto* o_obs = app.add_option("--obs-layers", obs_layers, "L_obs");
  auto* o_tau = app.add_option("--tau", tau, "ASL threshold tau");
  auto* o_select_k = app.add_option("--select-k", select_k, "Tokens propagated past the selection layer");
  auto* o_budget = app.add_option("--kv-budget", kv_budget, "KV tokens kept per layer and head; 0 = no budget");
  auto* o_max_layer = app.add_option("--max-layer", max_layer, "Force ASL's selection at this layer; -1 = never");
  auto* o_select_layer = app.add_option("--select-layer", select_layer, "Fixed selection layer (fastkv, gemfilter)");
  app.add_option("--slo-ttft", slo.ttft_ms, "Goodput SLO on TTFT in ms; 0 = none")->capture_default_str();
  app.add_option("--slo-tpot", slo.tpot_ms, "Goodput SLO on TPOT in ms; 0 = none")->capture_default_str();
  app.add_option("--json", json_path, "Write the summary, the options and per-request results here");
  CLI11_PARSE(app, argc, argv);

  load.sampling.set_max_tokens(max_tokens);
  load.sampling.set_temperature(temperature);
  load.sampling.set_ignore_eos(ignore_eos);
  asl::v1::PruningParams* p = &load.pruning;
  if (!policy.empty()) p->set_policy(policy);
  if (!pooling.empty()) p->set_pooling(pooling);
  SetIf(o_window->count() > 0, window, &asl::v1::PruningParams::set_window, p);
  SetIf(o_kernel->count() > 0, kernel, &asl::v1::PruningParams::set_kernel, p);
  SetIf(o_min_layer->count() > 0, min_layer, &asl::v1::PruningParams::set_min_layer, p);
  SetIf(o_obs->count() > 0, obs_layers, &asl::v1::PruningParams::set_obs_layers, p);
  SetIf(o_tau->count() > 0, tau, &asl::v1::PruningParams::set_tau, p);
  SetIf(o_select_k->count() > 0, select_k, &asl::v1::PruningParams::set_select_k, p);
  SetIf(o_budget->count() > 0, kv_budget, &asl::v1::PruningParams::set_kv_budget, p);
  SetIf(o_max_layer->count() > 0, max_layer, &asl::v1::PruningParams::set_max_layer, p);
  SetIf(o_select_layer->count() > 0, select_layer, &asl::v1::PruningParams::set_select_layer, p);

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    std::cerr << "asl-loadtest: cannot connect to " << target << " within 10 s\n";
    return 1;
  }
  auto stub = asl::v1::Generation::NewStub(channel);

  prompt_options.count = std::min<int64_t>(load.num_requests, 1024);
  std::vector<asl::loadtest::Prompt> prompts;
  std::string error;
  if (!asl::loadtest::MakePrompts(prompt_options, *stub, &prompts, &error)) {
    std::cerr << "asl-loadtest: " << error << "\n";
    return 1;
  }
  for (int i = 0; i < warmup; ++i) {
    asl::v1::GenerateRequest req;
    if (!prompts[0].token_ids.empty()) {
      for (int32_t t : prompts[0].token_ids) req.mutable_token_ids()->add_ids(t);
    } else {
      req.set_prompt(prompts[0].text);
    }
    *req.mutable_sampling() = load.sampling;
    *req.mutable_pruning() = load.pruning;
    req.set_request_id("loadtest-warmup-" + std::to_string(i));
    const asl::loadtest::RequestResult r = asl::loadtest::RunOne(*stub, req, load.timeout_s, 0);
    if (!r.ok) {
      std::cerr << "asl-loadtest: warm-up request failed: " << r.status_code << ": " << r.error << "\n";
      return 1;
    }
  }

  const asl::loadtest::LoadRun run = asl::loadtest::RunLoad(load, *stub, prompts);
  const json summary = asl::loadtest::Summarize(run.results, run.duration_s, slo);
  std::printf("asl-loadtest: %s, %s, %lld-token prompts, %d output tokens, policy %s\n", target.c_str(),
              load.rate > 0 ? ("Poisson " + std::to_string(load.rate) + " req/s").c_str()
                            : ("concurrency " + std::to_string(load.concurrency)).c_str(),
              static_cast<long long>(prompt_options.num_tokens), max_tokens,
              policy.empty() ? "(server default)" : policy.c_str());
  std::fputs(asl::loadtest::FormatTable(summary).c_str(), stdout);

  if (!json_path.empty()) {
    json requests = json::array();
    for (const auto& r : run.results) requests.push_back(asl::loadtest::ToJson(r));
    json out = {{"config",
                 {{"target", target},
                  {"mode", load.rate > 0 ? "poisson" : "concurrency"},
                  {"concurrency", load.concurrency},
                  {"rate", load.rate},
                  {"num_requests", load.num_requests},
                  {"duration_s", load.duration_s},
                  {"prompt_tokens", prompt_options.num_tokens},
                  {"prompt_file", prompt_options.file},
                  {"max_tokens", max_tokens},
                  {"ignore_eos", ignore_eos},
                  {"temperature", temperature},
                  {"seed", load.seed},
                  {"policy", policy},
                  {"pruning", p->ShortDebugString()}}},
                {"summary", summary},
                {"requests", requests}};
    std::ofstream f(json_path);
    f << out.dump(2) << "\n";
    if (!f) {
      std::cerr << "asl-loadtest: cannot write " << json_path << "\n";
      return 1;
    }
  }
  return summary["completed"].get<int64_t>() > 0 ? 0 : 3;
}

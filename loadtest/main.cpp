// asl-loadtest: bounded load against asl-server's gRPC API, with latency percentiles, throughput
// and goodput (see load_generator.h and stats.h).
//
//   asl-loadtest --target 127.0.0.1:50051 --concurrency 4 --num-requests 32 --prompt-tokens 1024
//                --max-tokens 64 --policy asl --kv-budget 256 --select-k 256 --json out.json
#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <type_traits>
#include <variant>

#include "loadtest/load_generator.h"
#include "loadtest/prompts.h"
#include "loadtest/stats.h"
#include "proto/pruning_fields.h"

namespace {

using nlohmann::json;

// One flag per pruning knob (engine/common/pruning_knobs.h): --window, --select-k, ... A knob is
// set in the request only when its flag is given; otherwise the server's default applies.
class PruningFlags {
 public:
  void Register(CLI::App* app) {
    for (size_t i = 0; i < std::size(asl::kPruningKnobs); ++i) {
      const asl::PruningKnob& knob = asl::kPruningKnobs[i];
      Arg& arg = args_[i];
      std::string help = knob.help;
      if (const std::string choices = asl::KnobChoices(knob, ", "); !choices.empty()) help += ": " + choices;
      help += " (default: the server's)";
      std::visit(
          [&](auto member) {
            using T = asl::KnobValueT<decltype(member)>;
            const std::string flag = asl::KnobFlag(knob);
            if constexpr (std::is_same_v<T, int>) arg.option = app->add_option(flag, arg.i, help);
            else if constexpr (std::is_same_v<T, double>) arg.option = app->add_option(flag, arg.d, help);
            else arg.option = app->add_option(flag, arg.s, help);
          },
          knob.member);
    }
  }

  void Apply(asl::v1::PruningParams* p) const {
    for (size_t i = 0; i < std::size(asl::kPruningKnobs); ++i) {
      const asl::PruningKnob& knob = asl::kPruningKnobs[i];
      const Arg& arg = args_[i];
      if (arg.option->count() == 0) continue;
      std::visit(
          [&](auto member) {
            using T = asl::KnobValueT<decltype(member)>;
            if constexpr (std::is_same_v<T, int>) asl::v1::SetKnob(knob, arg.i, p);
            else if constexpr (std::is_same_v<T, double>) asl::v1::SetKnob(knob, arg.d, p);
            else if (!arg.s.empty()) asl::v1::SetKnob(knob, arg.s, p);
          },
          knob.member);
    }
  }

 private:
  struct Arg {
    int32_t i = 0;
    double d = 0;
    std::string s;
    CLI::Option* option = nullptr;
  };
  std::array<Arg, std::size(asl::kPruningKnobs)> args_;
};

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
  PruningFlags pruning_flags;

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
  pruning_flags.Register(&app);
  app.add_option("--slo-ttft", slo.ttft_ms, "Goodput SLO on TTFT in ms; 0 = none")->capture_default_str();
  app.add_option("--slo-tpot", slo.tpot_ms, "Goodput SLO on TPOT in ms; 0 = none")->capture_default_str();
  app.add_option("--json", json_path, "Write the summary, the options and per-request results here");
  CLI11_PARSE(app, argc, argv);

  load.sampling.set_max_tokens(max_tokens);
  load.sampling.set_temperature(temperature);
  load.sampling.set_ignore_eos(ignore_eos);
  asl::v1::PruningParams* p = &load.pruning;
  pruning_flags.Apply(p);
  const std::string policy = p->has_policy() ? p->policy() : "";

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

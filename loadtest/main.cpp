// asl-loadtest: bounded load against asl-server's gRPC API, or against any OpenAI-compatible HTTP
// server (asl-gateway, llama.cpp's llama-server) with --api openai, with latency percentiles,
// throughput and goodput (see load_generator.h, openai_client.h and stats.h).
//
//   asl-loadtest --target 127.0.0.1:50051 --concurrency 4 --num-requests 32 --prompt-tokens 1024
//                --max-tokens 64 --policy asl --kv-budget 256 --select-k 256 --json out.json
//   # the same token ids for two HTTP servers: save them once (asl-server's tokenizer), then replay
//   asl-loadtest --target 127.0.0.1:50051 --prompt-tokens 2048 --num-requests 16 --save-prompts p.json --prompts-only
//   asl-loadtest --api openai --target http://127.0.0.1:8080 --prompt-ids p.json --concurrency 4 --num-requests 16
//
// Every flag is also an environment variable ASL_LOADTEST_<FLAG> (--target: ASL_LOADTEST_TARGET).
// The API key (--api-key, or its variable ASL_LOADTEST_API_KEY, or --api-key-file) goes out as
// gRPC metadata or the HTTP header "authorization: Bearer KEY".
#include <CLI/CLI.hpp>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <type_traits>
#include <variant>

#include "loadtest/load_generator.h"
#include "loadtest/openai_client.h"
#include "loadtest/prompts.h"
#include "loadtest/stats.h"
#include "proto/pruning_fields.h"
#include "security/api_keys.h"
#include "security/grpc_security.h"
#include "version/cli.h"

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
  std::string api = "grpc";
  std::string model, extra_body, label, prompt_ids_path, save_prompts_path;
  bool prompts_only = false;
  asl::loadtest::LoadOptions load;
  asl::loadtest::PromptOptions prompt_options;
  asl::loadtest::Slo slo;
  int max_tokens = 64;
  double temperature = 0;
  bool ignore_eos = true;
  int warmup = 1;
  std::string json_path;
  PruningFlags pruning_flags;
  std::string api_key, api_key_file;
  asl::security::ClientSecurity grpc_security;

  CLI::App app{"asl-loadtest: load generator and latency report for asl-server (gRPC) or any OpenAI-compatible "
               "server (HTTP, streaming /v1/completions)"};
  app.add_option("--api", api, "grpc: asl-server's Generate RPC; openai: POST /v1/completions with SSE")
      ->capture_default_str()
      ->check(CLI::IsMember({"grpc", "openai"}));
  app.add_option("--target", target, "grpc: asl-server address host:port; openai: base URL http://host:port")
      ->capture_default_str();
  app.add_option("--model", model, "openai: the request's \"model\" (default: the first of GET /v1/models)");
  app.add_option("--extra-body", extra_body,
                 "openai: a JSON object merged into every request body (after the built-in fields)");
  app.add_option("--label", label, "A name for this run, recorded in --json's config");
  app.add_option("--prompt-ids", prompt_ids_path,
                 "Prompts from a JSON file {\"prompts\": [[ids...], ...]} (as --save-prompts writes), used as is")
      ->check(CLI::ExistingFile);
  app.add_option("--save-prompts", save_prompts_path, "Write the prompts (token ids) used to this JSON file");
  app.add_flag("--prompts-only", prompts_only, "Build the prompts, write --save-prompts, and exit without load");
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
  app.add_option("--timeout", load.timeout_s, "Deadline of each request in seconds (openai: the HTTP read timeout)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--prompt-file", prompt_options.file, "Prompts, one per line (default: built-in essay text)")
      ->check(CLI::ExistingFile);
  app.add_option("--prompt-tokens", prompt_options.num_tokens,
                 "Cut every prompt to exactly this many tokens with the server's tokenizer (gRPC Tokenize; openai: "
                 "POST /tokenize, llama-server's API); 0 = send texts as they are")
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
  app.add_option("--api-key", api_key,
                 "API key sent as 'authorization: Bearer KEY' (gRPC metadata or HTTP header); prefer its "
                 "variable ASL_LOADTEST_API_KEY or --api-key-file, which keep it out of `ps`");
  app.add_option("--api-key-file", api_key_file, "File whose first line is the API key")->check(CLI::ExistingFile);
  app.add_flag("--tls", grpc_security.tls,
               "TLS: grpc: to asl-server (implied by --ca-file); openai: use an https:// --target instead");
  app.add_option("--ca-file", grpc_security.ca_file,
                 "TLS: CA certificates (PEM) the server's certificate must chain to (grpc and https); default: "
                 "the system's");
  app.add_option("--cert-file", grpc_security.cert_file, "grpc TLS: client certificate (PEM) for mutual TLS");
  app.add_option("--key-file", grpc_security.key_file, "grpc TLS: the client certificate's private key (PEM)");
  app.add_option("--tls-server-name", grpc_security.server_name,
                 "grpc TLS: the name the server's certificate must carry (default: the --target host)");
  asl::AddVersionFlag(&app, "asl-loadtest");
  asl::SetEnvNames(&app, "ASL_LOADTEST_");
  CLI11_PARSE(app, argc, argv);
  if (api_key.empty() && !api_key_file.empty()) {
    std::vector<std::string> keys;
    std::string key_error;
    if (!asl::security::LoadApiKeys(api_key_file, "", &keys, &key_error)) {
      std::cerr << "asl-loadtest: --api-key-file: " << key_error << "\n";
      return 2;
    }
    api_key = keys.front();
  }
  grpc_security.api_key = api_key;
  if (!grpc_security.ca_file.empty() || !grpc_security.cert_file.empty()) grpc_security.tls = true;

  load.sampling.set_max_tokens(max_tokens);
  load.sampling.set_temperature(temperature);
  load.sampling.set_ignore_eos(ignore_eos);
  asl::v1::PruningParams* p = &load.pruning;
  pruning_flags.Apply(p);
  const std::string policy = p->has_policy() ? p->policy() : "";

  if (!prompt_ids_path.empty() && (!prompt_options.file.empty() || prompt_options.num_tokens > 0)) {
    std::cerr << "asl-loadtest: --prompt-ids takes the prompts as they are; drop --prompt-file / --prompt-tokens\n";
    return 2;
  }
  if (prompts_only && save_prompts_path.empty()) {
    std::cerr << "asl-loadtest: --prompts-only needs --save-prompts\n";
    return 2;
  }
  const bool openai = api == "openai";
  prompt_options.count = std::min<int64_t>(load.num_requests, 1024);
  prompt_options.seed = load.seed;

  // Transport: a gRPC stub, or an HTTP client's options.
  std::unique_ptr<asl::v1::Generation::Stub> stub;
  asl::loadtest::OpenAiOptions http;
  std::string error;
  if (openai) {
    if (!asl::loadtest::ParseHttpUrl(target, &http.host, &http.port, &http.https, &error)) {
      std::cerr << "asl-loadtest: " << error << "\n";
      return 2;
    }
    http.ca_file = grpc_security.ca_file;
    http.api_key = api_key;
    http.timeout_s = load.timeout_s;
    http.model = model;
    if (http.model.empty()) {
      http.model = asl::loadtest::FirstModelId(http, &error);
      if (http.model.empty()) {
        std::cerr << "asl-loadtest: " << target << ": " << error << " (or pass --model)\n";
        return 1;
      }
    }
    // Greedy, exactly max_tokens, no prompt cache: the same work on every server. Unknown fields
    // are ignored by both asl-gateway and llama-server.
    json body = {{"max_tokens", max_tokens},
                 {"temperature", temperature},
                 {"ignore_eos", ignore_eos},
                 {"seed", load.seed},
                 {"cache_prompt", false}};
    std::string pruning_json;
    google::protobuf::util::JsonPrintOptions po;
    po.preserve_proto_field_names = true;
    if (!google::protobuf::util::MessageToJsonString(*p, &pruning_json, po).ok()) {
      std::cerr << "asl-loadtest: cannot convert the pruning knobs to JSON\n";
      return 1;
    }
    const json pruning = json::parse(pruning_json);
    if (!pruning.empty()) body["pruning"] = pruning;
    if (!extra_body.empty()) {
      const json extra = json::parse(extra_body, nullptr, /*allow_exceptions=*/false);
      if (extra.is_discarded() || !extra.is_object()) {
        std::cerr << "asl-loadtest: --extra-body must be a JSON object\n";
        return 2;
      }
      body.merge_patch(extra);
    }
    http.body_extra = std::move(body);
  } else {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    args.SetMaxSendMessageSize(64 << 20);
    auto channel = asl::security::MakeClientChannel(target, grpc_security, args, &error);
    if (channel == nullptr) {
      std::cerr << "asl-loadtest: " << error << "\n";
      return 2;
    }
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      std::cerr << "asl-loadtest: cannot connect to " << target << " within 10 s\n";
      return 1;
    }
    stub = asl::v1::Generation::NewStub(channel);
  }

  std::vector<asl::loadtest::Prompt> prompts;
  bool made = false;
  if (!prompt_ids_path.empty()) {
    made = asl::loadtest::ReadPromptsFile(prompt_ids_path, &prompts, &error);
  } else if (openai) {
    made = asl::loadtest::MakePrompts(
        prompt_options,
        [&http](const std::string& text, bool add_bos, std::vector<int32_t>* ids, std::string* err) {
          return asl::loadtest::TokenizeHttp(http, text, add_bos, ids, err);
        },
        &prompts, &error);
  } else {
    made = asl::loadtest::MakePrompts(prompt_options, asl::loadtest::GrpcTokenizer(*stub), &prompts, &error);
  }
  if (!made) {
    std::cerr << "asl-loadtest: " << error << "\n";
    return 1;
  }
  if (!save_prompts_path.empty()) {
    const json meta = {{"tokenized_by", prompt_ids_path.empty() ? target : "--prompt-ids " + prompt_ids_path},
                       {"prompt_tokens", prompt_options.num_tokens},
                       {"prompt_file", prompt_options.file},
                       {"seed", load.seed}};
    if (!asl::loadtest::WritePromptsFile(save_prompts_path, prompts, meta, &error)) {
      std::cerr << "asl-loadtest: " << error << "\n";
      return 1;
    }
    if (prompts_only) {
      std::printf("asl-loadtest: wrote %zu prompts to %s\n", prompts.size(), save_prompts_path.c_str());
      return 0;
    }
  }

  // One request of either transport, measured.
  auto send = [&](const asl::loadtest::Prompt& prompt, int64_t index, const std::string& id,
                  double run_start) -> asl::loadtest::RequestResult {
    if (openai) {
      return asl::loadtest::RunOneOpenAi(http, asl::loadtest::CompletionBody(http, prompt, index), run_start);
    }
    asl::v1::GenerateRequest req = asl::loadtest::MakeRequest(load, prompt, index);
    if (!id.empty()) req.set_request_id(id);
    return asl::loadtest::RunOne(*stub, req, load.timeout_s, run_start);
  };
  for (int i = 0; i < warmup; ++i) {
    const asl::loadtest::RequestResult r =
        send(prompts[0], /*index=*/0, "loadtest-warmup-" + std::to_string(i), asl::loadtest::Now());
    if (!r.ok) {
      std::cerr << "asl-loadtest: warm-up request failed: " << r.status_code << ": " << r.error << "\n";
      return 1;
    }
  }

  const asl::loadtest::LoadRun run = asl::loadtest::RunLoad(load, [&](int64_t i, double start) {
    return send(prompts[static_cast<size_t>(i) % prompts.size()], i, /*id=*/"", start);
  });
  const json summary = asl::loadtest::Summarize(run.results, run.duration_s, slo);
  std::printf("asl-loadtest: %s %s, %s, %lld-token prompts, %d output tokens, policy %s\n", api.c_str(),
              target.c_str(),
              load.rate > 0 ? ("Poisson " + std::to_string(load.rate) + " req/s").c_str()
                            : ("concurrency " + std::to_string(load.concurrency)).c_str(),
              static_cast<long long>(prompt_ids_path.empty() ? prompt_options.num_tokens
                                                             : static_cast<int64_t>(prompts[0].token_ids.size())),
              max_tokens,
              policy.empty() ? "(server default)" : policy.c_str());
  std::fputs(asl::loadtest::FormatTable(summary).c_str(), stdout);

  if (!json_path.empty()) {
    json requests = json::array();
    for (const auto& r : run.results) requests.push_back(asl::loadtest::ToJson(r));
    json out = {{"config",
                 {{"api", api},
                  {"target", target},
                  {"label", label},
                  {"model", openai ? http.model : ""},
                  {"prompt_ids", prompt_ids_path},
                  {"warmup", warmup},
                  {"timeout_s", load.timeout_s},
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
                  {"pruning", p->ShortDebugString()},
                  {"request_body", openai ? http.body_extra : json()}}},
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

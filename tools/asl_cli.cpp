// asl-cli: generate, tokenize, logits and eval on a local model, for people and for parity checks.
// `generate` goes through the same Engine as the server, so its output is what the server returns.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <sstream>

#include "engine/common/logging.h"
#include "engine/engine.h"
#include "engine/tokenizer/chat_template.h"
#include "engine/tokenizer/tokenizer.h"
#include "tools/cli_common.h"
#include "version/cli.h"

using json = nlohmann::json;

namespace asl::cli {
namespace {

// Collects a request's output on the engine thread; prints text as it streams unless quiet.
class CollectSink : public RequestSink {
 public:
  explicit CollectSink(bool stream) : stream_(stream) {}
  void OnTokens(const TokenChunk& c) override {
    ids_.insert(ids_.end(), c.token_ids.begin(), c.token_ids.end());
    text_ += c.text;
    for (size_t i = 0; i < c.sampled_logprobs.size(); ++i) {
      json top = json::array();
      if (i < c.top_logprobs.size()) {
        for (const TokenLogprob& t : c.top_logprobs[i]) top.push_back({{"token_id", t.token_id}, {"logprob", t.logprob}});
      }
      logprobs_.push_back({{"token_id", c.sampled_logprobs[i].token_id},
                           {"logprob", c.sampled_logprobs[i].logprob},
                           {"top", std::move(top)}});
    }
    if (stream_) {
      std::fwrite(c.text.data(), 1, c.text.size(), stdout);
      std::fflush(stdout);
    }
  }
  void OnFinish(const FinishEvent& ev) override { done_.set_value(ev); }
  FinishEvent Wait() { return done_.get_future().get(); }
  const std::vector<TokenId>& ids() const { return ids_; }
  const std::string& text() const { return text_; }
  // With --logprobs N: per generated token, its logprob and the top N ({token_id, logprob, top}).
  const json& logprobs() const { return logprobs_; }

 private:
  bool stream_;
  json logprobs_ = json::array();
  std::vector<TokenId> ids_;
  std::string text_;
  std::promise<FinishEvent> done_;
};

int Fail(const Status& st) {
  std::fprintf(stderr, "asl-cli: %s\n", st.ToString().c_str());
  return st.code() == StatusCode::kInvalidArgument ? 2 : 1;
}

int RunGenerate(const CommonOptions& o, const PromptOptions& p, SamplingParams sampling, bool json_out) {
  EngineConfig config = o.ToEngineConfig();
  auto engine_or = Engine::Create(config);
  if (!engine_or.ok()) return Fail(engine_or.status());
  std::unique_ptr<Engine> engine = std::move(engine_or).value();
  auto ids = p.Resolve(engine->tokenizer());
  if (!ids.ok()) return Fail(ids.status());

  GenerateRequest req;
  req.client_id = "asl-cli";
  req.prompt_ids = *ids;
  req.sampling = std::move(sampling);
  req.pruning = o.pruning;
  auto sink = std::make_shared<CollectSink>(!json_out);
  auto id = engine->Submit(req, sink);
  if (!id.ok()) return Fail(id.status());
  FinishEvent ev = sink->Wait();
  engine->Shutdown(false, std::chrono::milliseconds(0));
  if (!ev.status.ok()) return Fail(ev.status);
  if (json_out) {
    json out = {{"prompt_token_ids", *ids}, {"token_ids", sink->ids()}, {"text", sink->text()},
                {"finish_reason", FinishReasonName(ev.reason)}};
    out["usage"] = UsageJson(ev);
    out["timings"] = TimingsJson(ev.timings);
    out["pruning"] = PruningJson(ev.pruning);
    if (req.sampling.logprobs > 0) out["logprobs"] = sink->logprobs();
    std::cout << out.dump() << "\n";
  } else {
    std::printf("\n");
  }
  return 0;
}

int RunTokenize(const CommonOptions& o, const PromptOptions& p, bool json_out) {
  auto tokenizer = LoadTokenizerOnly(o.model_path, o.chat_template);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  auto ids = p.Resolve(**tokenizer);
  if (!ids.ok()) return Fail(ids.status());
  if (json_out) {
    json pieces = json::array();
    for (TokenId t : *ids) pieces.push_back((*tokenizer)->TokenText(t));
    std::cout << json{{"token_ids", *ids}, {"count", ids->size()}}.dump() << "\n";
  } else {
    for (size_t i = 0; i < ids->size(); ++i) std::printf("%s%d", i ? " " : "", (*ids)[i]);
    std::printf("\n");
  }
  return 0;
}

}  // namespace
}  // namespace asl::cli

int main(int argc, char** argv) {
  using namespace asl;
  using namespace asl::cli;
  CLI::App app{"asl-cli: run asl-serve's engine on a local model"};
  AddVersionFlag(&app, "asl-cli");
  app.require_subcommand(1);
  CommonOptions common;
  PromptOptions prompt;
  SamplingParams sampling;
  bool json_out = false;
  std::string eval_args;

  auto add_common = [&](CLI::App* sub) {
    common.Register(sub);
    prompt.Register(sub);
    sub->add_flag("--json", json_out, "machine-readable output");
  };
  CLI::App* gen = app.add_subcommand("generate", "generate a completion (greedy by default)");
  add_common(gen);
  gen->add_option("--max-tokens", sampling.max_tokens, "tokens to generate")->capture_default_str();
  gen->add_option("--temperature", sampling.temperature, "0 = greedy")->capture_default_str();
  gen->add_option("--top-p", sampling.top_p)->capture_default_str();
  gen->add_option("--top-k", sampling.top_k, "0 = off")->capture_default_str();
  gen->add_option("--min-p", sampling.min_p)->capture_default_str();
  gen->add_option("--repetition-penalty", sampling.repetition_penalty)->capture_default_str();
  gen->add_option("--presence-penalty", sampling.presence_penalty)->capture_default_str();
  gen->add_option("--frequency-penalty", sampling.frequency_penalty)->capture_default_str();
  gen->add_option_function<uint64_t>("--seed", [&](const uint64_t& s) { sampling.seed = s; }, "sampling seed");
  gen->add_option("--stop", sampling.stop, "stop string (repeatable)");
  gen->add_flag("--ignore-eos", sampling.ignore_eos, "keep generating past EOS");
  gen->add_option("--logprobs", sampling.logprobs, "top-n logprobs per token")->capture_default_str();

  CLI::App* tokz = app.add_subcommand("tokenize", "print the prompt's token ids");
  add_common(tokz);
  CLI::App* logits = app.add_subcommand("logits", "last-position logits of the prompt (parity checks)");
  add_common(logits);
  EvalOptions eval;
  CLI::App* ev = app.add_subcommand("eval", "accuracy benchmark: RULER-style tasks and NIAH over policies");
  common.Register(ev);
  eval.Register(ev);

  ThroughputOptions throughput;
  CLI::App* tp = app.add_subcommand("throughput", "capacity and output tokens/s at several concurrencies, per policy");
  common.Register(tp);
  throughput.Register(tp);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  logging::LogToStderr();
  if (!SetLogLevel(common.log_level)) {
    std::fprintf(stderr, "asl-cli: --log-level: unknown level '%s'\n", common.log_level.c_str());
    return 2;
  }
  if (gen->parsed()) return RunGenerate(common, prompt, sampling, json_out);
  if (tokz->parsed()) return RunTokenize(common, prompt, json_out);
  if (logits->parsed()) return RunLogits(common, prompt, json_out);
  if (ev->parsed()) return RunEval(common, eval);
  if (tp->parsed()) return RunThroughput(common, throughput);
  return 2;
}

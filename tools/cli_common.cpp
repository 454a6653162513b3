#include "tools/cli_common.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <type_traits>
#include <variant>

#include "engine/common/cpu_quota.h"
#include "engine/kv/dense_kv_cache.h"
#include "engine/model/gguf.h"
#include "engine/model/llama_model.h"
#include "engine/model/model_loader.h"
#include "engine/prune/policy.h"
#include "engine/runner/model_runner.h"
#include "engine/tokenizer/chat_template.h"

using json = nlohmann::json;

namespace asl::cli {

void CommonOptions::Register(CLI::App* app) {
  app->add_option("--model", model_path, "GGUF file or Hugging Face safetensors directory")->capture_default_str();
  app->add_option("--device", device, "cpu or cuda[:N]")->capture_default_str();
  app->add_option("--chat-template", chat_template,
                  "override the model's chat template: chatml, llama3 or the path of a Jinja file");
  app->add_option("--dtype", dtype,
                  "auto, float32 or bfloat16 (auto = bfloat16 on CPUs with native bf16; asl-cli defaults to "
                  "float32, the parity reference; asl-server to auto)")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16"}))
      ->capture_default_str();
  app->add_option("--kv-dtype", kv_dtype, "KV pool storage: auto, float16, bfloat16 or float32")
      ->capture_default_str();
  app->add_option("--decode-activations", decode_activations,
                  "decode projections over GGUF blocks: float32 (asl-cli's default, the parity reference) or int8 "
                  "(integer dot products, asl-server's default)")
      ->check(CLI::IsMember({"float32", "int8"}))
      ->capture_default_str();
  app->add_option("--threads", threads, "intra-op threads (0 = the usable CPUs: affinity capped by the cgroup CPU quota)")->capture_default_str();
  app->add_option("--kv-cache", kv_cache, "KV pool size, e.g. 512MiB, 2GiB")->capture_default_str();
  app->add_option("--block-size", block_size, "tokens per KV block")->capture_default_str();
  app->add_option("--step-prefill-budget", step_prefill_budget,
                  "prefill work per engine step in token-layers (0 = each prefill in one step)")
      ->capture_default_str();
  app->add_option("--admission", admission, "scheduler admission: reserve (lifetime blocks, no preemption) or optimistic")
      ->check(CLI::IsMember({"reserve", "optimistic"}))
      ->capture_default_str();
  app->add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  for (const PruningKnob& knob : kPruningKnobs) {
    std::string help = knob.help;
    if (const std::string choices = KnobChoices(knob, ", "); !choices.empty()) help += ": " + choices;
    std::visit(
        [&](auto member) {
          using T = KnobValueT<decltype(member)>;
          if constexpr (std::is_same_v<T, PolicyKind>) {
            app->add_option(KnobFlag(knob), policy, help)->capture_default_str();
          } else if constexpr (std::is_same_v<T, Pooling>) {
            app->add_option(KnobFlag(knob), pooling, help)->capture_default_str();
          } else {
            app->add_option(KnobFlag(knob), pruning.*member, help)->capture_default_str();
          }
        },
        knob.member);
  }
  app->callback([this] {
    Status st = Finalize();
    if (!st.ok()) throw CLI::ValidationError(st.message());
  });
}

Status CommonOptions::Finalize() {
  auto p = ParsePolicy(policy);
  if (!p) return InvalidArgument("--policy: unknown policy '" + policy + "'");
  pruning.policy = *p;
  auto q = ParsePooling(pooling);
  if (!q) return InvalidArgument("--pooling: must be " + PoolingNames(" or ") + ", got '" + pooling + "'");
  pruning.pooling = *q;
  return Status::Ok();
}

static int64_t ParseBytes(const std::string& s) {
  size_t pos = 0;
  double v = std::stod(s, &pos);
  std::string unit = s.substr(pos);
  double mul = 1;
  if (unit == "KiB" || unit == "K") mul = 1024.0;
  else if (unit == "MiB" || unit == "M") mul = 1048576.0;
  else if (unit == "GiB" || unit == "G") mul = 1073741824.0;
  else if (!unit.empty()) throw CLI::ValidationError("--kv-cache: unknown unit '" + unit + "'");
  return static_cast<int64_t>(v * mul);
}

EngineConfig CommonOptions::ToEngineConfig() const {
  EngineConfig c;
  c.model_path = model_path;
  c.device = device;
  c.dtype = dtype;
  c.kv_dtype = kv_dtype;
  c.decode_activations = decode_activations;
  c.chat_template = chat_template;
  c.num_threads = threads;
  c.kv_cache_bytes = ParseBytes(kv_cache);
  c.block_size = block_size;
  c.step_prefill_budget = step_prefill_budget;
  c.optimistic_admission = admission == "optimistic";
  c.default_pruning = pruning;
  return c;
}

void PromptOptions::Register(CLI::App* app) {
  app->add_option("--prompt,-p", prompt, "prompt text (used as is, no chat template)");
  app->add_option("--prompt-file", prompt_file, "read the prompt text from a file");
  app->add_option("--chat", chat, "chat messages as JSON (or a path to a JSON file): the model's chat template applies");
  app->add_option("--ids", ids, "comma-separated prompt token ids");
  app->add_flag("--no-bos", no_bos, "never prepend BOS");
}

StatusOr<std::vector<TokenId>> PromptOptions::Resolve(const tok::Tokenizer& tokenizer) const {
  if (!ids.empty()) {
    std::vector<TokenId> out;
    std::stringstream ss(ids);
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        out.push_back(static_cast<TokenId>(std::stol(item)));
      } catch (const std::exception&) {
        return InvalidArgument("--ids: not a token id: '" + item + "'");
      }
    }
    return out;
  }
  std::string text = prompt;
  if (!prompt_file.empty()) {
    std::ifstream f(prompt_file, std::ios::binary);
    if (!f) return NotFound("--prompt-file: cannot read " + prompt_file);
    text.assign(std::istreambuf_iterator<char>(f), {});
  }
  if (!chat.empty()) {
    std::string body = chat;
    if (!body.empty() && body[0] != '[') {
      std::ifstream f(chat);
      if (!f) return NotFound("--chat: neither JSON nor a readable file: " + chat);
      body.assign(std::istreambuf_iterator<char>(f), {});
    }
    std::vector<tok::ChatMessage> messages;
    try {
      for (const auto& m : json::parse(body)) {
        messages.push_back({.role = m.at("role").get<std::string>(), .content = m.at("content").get<std::string>()});
      }
    } catch (const std::exception& e) {
      return InvalidArgument(std::string("--chat: expected [{\"role\":..., \"content\":...}]: ") + e.what());
    }
    ASL_ASSIGN_OR_RETURN(tok::RenderedChat rendered, tokenizer.ApplyChatTemplate(messages, {}));
    return tokenizer.EncodeChat(rendered);
  }
  if (text.empty()) return InvalidArgument("prompt: give --prompt, --prompt-file, --chat or --ids");
  return tokenizer.Encode(text, tokenizer.add_bos() && !no_bos, /*parse_special=*/true);
}

StatusOr<std::unique_ptr<tok::Tokenizer>> LoadTokenizerOnly(const std::string& model_path,
                                                             const std::string& chat_template) {
  tok::TokenizerSpec spec;
  if (model_path.size() > 5 && model_path.substr(model_path.size() - 5) == ".gguf") {
    ASL_ASSIGN_OR_RETURN(auto gguf, model::GgufFile::Open(model_path));
    ASL_ASSIGN_OR_RETURN(spec, model::TokenizerSpecFromGguf(*gguf));
  } else {
    ASL_ASSIGN_OR_RETURN(spec, tok::Tokenizer::SpecFromTokenizerJson(model_path));
  }
  ASL_ASSIGN_OR_RETURN(std::unique_ptr<tok::Tokenizer> t, tok::Tokenizer::Create(std::move(spec)));
  if (!chat_template.empty()) ASL_RETURN_IF_ERROR(t->OverrideChatTemplate(chat_template));
  return t;
}

json PruningJson(const PruningReport& r) {
  return json{{"policy", PolicyName(r.policy)},
              {"outcome", SelectionOutcomeName(r.outcome)},
              {"selection_layer", r.selection_layer},
              {"prompt_tokens", r.num_prompt_tokens},
              {"propagated_tokens", r.num_propagated_tokens},
              {"kv_tokens_kept", r.num_kv_tokens_kept},
              {"kv_tokens_full", r.num_kv_tokens_full},
              {"kv_bytes", r.kv_bytes},
              {"prefill_seconds", r.prefill_seconds},
              {"prefill_token_layers", r.prefill_token_layers},
              {"prefill_slices", r.num_prefill_slices},
              {"variance_ratios", r.variance_ratios},
              {"selected_positions", r.selected_positions}};
}

json TimingsJson(const Timings& t) {
  return json{{"queue_seconds", t.queue_seconds},
              {"ttft_seconds", t.ttft_seconds},
              {"e2e_seconds", t.e2e_seconds},
              {"mean_tpot_seconds", t.mean_tpot_seconds}};
}

json UsageJson(const FinishEvent& ev) {
  return json{{"prompt_tokens", ev.usage.prompt_tokens},
              {"completion_tokens", ev.usage.completion_tokens},
              {"kv_tokens_kept", ev.usage.kv_tokens_kept}};
}

int RunLogits(CommonOptions& o, const PromptOptions& p, bool json_out) {
  auto fail = [](const Status& st) {
    std::fprintf(stderr, "asl-cli: %s\n", st.ToString().c_str());
    return 1;
  };
  at::Device device(o.device);
  auto dtype_or = model::ResolveDtype(o.dtype, device);
  if (!dtype_or.ok()) return fail(dtype_or.status());
  const at::ScalarType dtype = *dtype_or;
  at::set_num_threads(o.threads > 0 ? o.threads : ReadCpuBudget().num_cpus);  // as the engine does
  auto loaded = model::LoadModel(o.model_path, device, dtype);
  if (!loaded.ok()) return fail(loaded.status());
  std::unique_ptr<tok::Tokenizer> tokenizer;
  if (loaded->gguf_tokenizer) {
    auto t = tok::Tokenizer::Create(*loaded->gguf_tokenizer);
    if (!t.ok()) return fail(t.status());
    tokenizer = std::move(t).value();
  } else {
    auto t = LoadTokenizerOnly(loaded->tokenizer_dir);
    if (!t.ok()) return fail(t.status());
    tokenizer = std::move(t).value();
  }
  auto ids = p.Resolve(*tokenizer);
  if (!ids.ok()) return fail(ids.status());
  model::Activations activations = model::Activations::kFloat32;
  model::ParseActivations(o.decode_activations, &activations);  // checked by the flag
  model::LlamaModel model(loaded->config, std::move(loaded->weights), activations);
  const auto& mc = model.config();
  PruningParams params = o.pruning;
  Status st = ResolvePruningParams(&params, static_cast<int>(mc.num_layers));
  if (!st.ok()) return fail(st);
  kv::DenseKvCache cache(static_cast<int>(mc.num_layers));
  runner::ModelRunner runner(&model, &cache);
  st = cache.AddSequence(1);
  if (!st.ok()) return fail(st);
  prune::PruningPolicy policy(params, static_cast<int>(mc.num_layers), mc.num_kv_heads,
                              static_cast<int64_t>(ids->size()));
  std::vector<runner::PrefillSeq> seqs{{1, *ids, &policy}};
  auto out = runner.Prefill(seqs);
  if (!out.ok()) return fail(out.status());
  at::Tensor row = out->logits[0].contiguous();
  std::vector<float> logits(row.data_ptr<float>(), row.data_ptr<float>() + row.numel());
  PruningReport report = policy.report();
  report.num_prefill_slices = out->num_slices;
  report.num_kv_tokens_kept = runner.KvTokens(1);
  report.num_kv_tokens_full = mc.num_layers * static_cast<int64_t>(ids->size());
  if (json_out) {
    std::cout << json{{"token_ids", *ids}, {"logits", logits}, {"pruning", PruningJson(report)}}.dump() << "\n";
  } else {
    const int64_t best = row.argmax().item<int64_t>();
    std::printf("argmax %lld (%s) logit %.5f\n", static_cast<long long>(best),
                tokenizer->TokenText(static_cast<TokenId>(best)).c_str(), logits[best]);
  }
  return 0;
}

}  // namespace asl::cli

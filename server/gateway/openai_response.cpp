#include "server/gateway/openai_response.h"

namespace asl::gateway {
namespace {

using nlohmann::json;

// A token's bytes as OpenAI's `bytes`: the list of byte values.
json BytesJson(const std::string& bytes) {
  json out = json::array();
  for (unsigned char c : bytes) out.push_back(static_cast<int>(c));
  return out;
}

// Characters (code points) of valid UTF-8: the bytes that do not continue a sequence.
int64_t NumChars(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

const char* OutcomeName(v1::SelectionOutcome o) {
  switch (o) {
    case v1::SELECTION_OUTCOME_NONE: return "none";
    case v1::SELECTION_OUTCOME_SELECTED: return "selected";
    case v1::SELECTION_OUTCOME_FORCED: return "forced";
    default: return "not_applicable";
  }
}

json Envelope(const ResponseContext& ctx, bool chunk) {
  const bool chat = ctx.endpoint == Endpoint::kChatCompletions;
  return {{"id", ctx.id},
          {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
          {"created", ctx.created},
          {"model", ctx.model}};
}

json Choice(const ResponseContext& ctx, int index, const std::string& text, json logprobs, json finish_reason,
            bool delta, bool with_role) {
  json c = {{"index", index}};
  if (ctx.endpoint == Endpoint::kChatCompletions) {
    json msg = json::object();
    if (with_role) msg["role"] = "assistant";
    if (!delta || !text.empty() || !with_role) msg["content"] = text;
    c[delta ? "delta" : "message"] = std::move(msg);
  } else {
    c["text"] = text;
  }
  c["logprobs"] = std::move(logprobs);
  c["finish_reason"] = std::move(finish_reason);
  return c;
}

json ToolCallJson(const ParsedToolCall& call) {
  return {{"id", call.id}, {"type", "function"}, {"function", {{"name", call.name}, {"arguments", call.arguments}}}};
}

// finish_reason: "tool_calls" for a reply that called tools and stopped by itself.
const char* FinishReason(const v1::GenerateComplete& complete, bool tool_calls) {
  return tool_calls && complete.finish_reason() == v1::FINISH_REASON_STOP ? "tool_calls"
                                                                          : FinishReasonName(complete.finish_reason());
}

bool AllSpace(const std::string& s) {
  return s.find_first_not_of(" \t\r\n") == std::string::npos;
}

}  // namespace

void LogprobsBuilder::Add(const v1::TokenLogprob& lp, const v1::TopLogprobs* alternatives, bool first_of_prompt) {
  const bool chat = ctx_.endpoint == Endpoint::kChatCompletions;
  json top = chat ? json::array() : json::object();
  if (alternatives != nullptr) {
    const auto& cands = alternatives->candidates();
    for (int c = 0; c < cands.size() && c < ctx_.top_logprobs; ++c) {
      if (chat) {
        top.push_back({{"token", cands[c].text()},
                       {"logprob", cands[c].logprob()},
                       {"bytes", BytesJson(cands[c].token_bytes())}});
      } else if (!top.contains(cands[c].text())) {  // two ids may share a text: the likelier one
        top[cands[c].text()] = cands[c].logprob();
      }
    }
  }
  if (chat) {
    content_.push_back({{"token", lp.text()},
                        {"logprob", lp.logprob()},
                        {"bytes", BytesJson(lp.token_bytes())},
                        {"top_logprobs", std::move(top)}});
  } else {
    tokens_.push_back(lp.text());
    // The prompt's first token has no logprob: nothing precedes it (OpenAI's null).
    token_logprobs_.push_back(first_of_prompt ? json(nullptr) : json(lp.logprob()));
    top_.push_back(ctx_.top_logprobs > 0 && !first_of_prompt ? std::move(top) : json(nullptr));
    offsets_.push_back(offset_);
  }
  offset_ += NumChars(lp.text());
}

void LogprobsBuilder::Append(const v1::GenerateChunk& chunk) {
  if (!ctx_.logprobs) return;
  for (int k = 0; k < chunk.prompt_logprobs_size(); ++k) {  // echo: the prompt's tokens first
    Add(chunk.prompt_logprobs(k), k < chunk.prompt_top_logprobs_size() ? &chunk.prompt_top_logprobs(k) : nullptr,
        /*first_of_prompt=*/k == 0);
  }
  for (int k = 0; k < chunk.logprobs_size(); ++k) {
    Add(chunk.logprobs(k), k < chunk.top_logprobs_size() ? &chunk.top_logprobs(k) : nullptr,
        /*first_of_prompt=*/false);
  }
}

json LogprobsBuilder::Take() {
  if (!ctx_.logprobs) return nullptr;
  json out;
  if (ctx_.endpoint == Endpoint::kChatCompletions) {
    out = {{"content", std::move(content_)}};
    content_ = json::array();
  } else {
    out = {{"tokens", std::move(tokens_)},
           {"token_logprobs", std::move(token_logprobs_)},
           {"top_logprobs", std::move(top_)},
           {"text_offset", std::move(offsets_)}};
    tokens_ = token_logprobs_ = top_ = offsets_ = json::array();
  }
  return out;
}

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_CANCELLED: return "cancelled";
    case v1::FINISH_REASON_ABORT: return "abort";
    case v1::FINISH_REASON_ERROR: return "error";
    default: return "stop";
  }
}

json UsageJson(const v1::GenerateComplete& complete) {
  const v1::Usage& u = complete.usage();
  return {{"prompt_tokens", u.prompt_tokens()},
          {"completion_tokens", u.completion_tokens()},
          {"total_tokens", u.prompt_tokens() + u.completion_tokens()},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens()}}}};
}

json AslJson(const std::string& request_id, const v1::GenerateComplete& complete) {
  const v1::PruningReport& p = complete.pruning();
  json pruning = {{"policy", p.policy()},
                  {"outcome", OutcomeName(p.outcome())},
                  {"selection_layer", p.selection_layer()},
                  {"num_prompt_tokens", p.num_prompt_tokens()},
                  {"num_propagated_tokens", p.num_propagated_tokens()},
                  {"num_kv_tokens_kept", p.num_kv_tokens_kept()},
                  {"num_kv_tokens_full", p.num_kv_tokens_full()},
                  {"kv_bytes", p.kv_bytes()},
                  {"prefill_seconds", p.prefill_seconds()},
                  {"prefill_token_layers", p.prefill_token_layers()},
                  {"num_prefill_slices", p.num_prefill_slices()}};
  if (p.variance_ratios_size() > 0) pruning["variance_ratios"] = json(p.variance_ratios());
  if (p.selected_positions_size() > 0) pruning["selected_positions"] = json(p.selected_positions());
  const v1::Timings& t = complete.timings();
  return {{"request_id", request_id},
          {"finish_reason", FinishReasonName(complete.finish_reason())},
          {"stop_string", complete.stop_string()},
          {"num_preemptions", complete.num_preemptions()},
          {"kv_tokens_kept", complete.usage().kv_tokens_kept()},
          {"kv_tokens_full", complete.usage().kv_tokens_full()},
          {"timings",
           {{"queue_seconds", t.queue_seconds()},
            {"ttft_seconds", t.ttft_seconds()},
            {"e2e_seconds", t.e2e_seconds()},
            {"mean_tpot_seconds", t.mean_tpot_seconds()},
            {"prefill_seconds", t.prefill_seconds()}}},
          {"pruning", std::move(pruning)}};
}

json UsageJson(const std::vector<const v1::GenerateComplete*>& completes, const std::vector<int>& prompt_of) {
  int64_t prompt = 0, completion = 0, cached = 0;
  for (size_t i = 0; i < completes.size(); ++i) {
    const v1::Usage& u = completes[i]->usage();
    const bool first_of_prompt = i == 0 || prompt_of[i] != prompt_of[i - 1];
    if (first_of_prompt) {
      prompt += u.prompt_tokens();
      cached += u.cached_tokens();
    }
    completion += u.completion_tokens();
  }
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

json CompletionJson(const ResponseContext& ctx, const std::vector<ChoiceOut>& choices, json usage) {
  json j = Envelope(ctx, /*chunk=*/false);
  j["choices"] = json::array();
  json asl_choices = json::array();
  for (const ChoiceOut& c : choices) {
    const bool calls = !c.tool_calls.empty();
    json choice = Choice(ctx, c.index, c.text, c.logprobs, FinishReason(*c.complete, calls), /*delta=*/false,
                         /*with_role=*/true);
    if (calls && ctx.endpoint == Endpoint::kChatCompletions) {
      json& msg = choice["message"];
      if (AllSpace(c.text)) msg["content"] = nullptr;
      msg["tool_calls"] = json::array();
      for (const ParsedToolCall& t : c.tool_calls) msg["tool_calls"].push_back(ToolCallJson(t));
    }
    j["choices"].push_back(std::move(choice));
    asl_choices.push_back(AslJson(ctx.request_id, *c.complete));
  }
  j["usage"] = std::move(usage);
  j["asl"] = asl_choices.empty() ? json(nullptr) : asl_choices[0];
  if (asl_choices.size() > 1) j["asl"]["choices"] = std::move(asl_choices);
  return j;
}

json CompletionJson(const ResponseContext& ctx, const std::string& text, json logprobs,
                    const v1::GenerateComplete& complete) {
  return CompletionJson(ctx, {ChoiceOut{0, text, std::move(logprobs), &complete}}, UsageJson(complete));
}

json RoleChunkJson(const ResponseContext& ctx, int index) {
  json j = Envelope(ctx, /*chunk=*/true);
  j["choices"] = json::array({Choice(ctx, index, "", nullptr, nullptr, /*delta=*/true, /*with_role=*/true)});
  return j;
}

json DeltaChunkJson(const ResponseContext& ctx, const std::string& text, json logprobs, int index) {
  json j = Envelope(ctx, /*chunk=*/true);
  j["choices"] =
      json::array({Choice(ctx, index, text, std::move(logprobs), nullptr, /*delta=*/true, /*with_role=*/false)});
  return j;
}

json ToolCallsChunkJson(const ResponseContext& ctx, const std::vector<ParsedToolCall>& calls, int first, int index) {
  json j = Envelope(ctx, /*chunk=*/true);
  json deltas = json::array();
  for (size_t k = 0; k < calls.size(); ++k) {
    json d = ToolCallJson(calls[k]);
    d["index"] = first + static_cast<int>(k);
    deltas.push_back(std::move(d));
  }
  json c = {{"index", index}, {"delta", {{"tool_calls", std::move(deltas)}}}, {"logprobs", nullptr},
            {"finish_reason", nullptr}};
  j["choices"] = json::array({std::move(c)});
  return j;
}

json FinishChunkJson(const ResponseContext& ctx, const v1::GenerateComplete& complete, int index, bool tool_calls) {
  json j = Envelope(ctx, /*chunk=*/true);
  json c = Choice(ctx, index, "", nullptr, FinishReason(complete, tool_calls), /*delta=*/true,
                  /*with_role=*/false);
  if (ctx.endpoint == Endpoint::kChatCompletions) c["delta"] = json::object();
  j["choices"] = json::array({std::move(c)});
  j["asl"] = AslJson(ctx.request_id, complete);
  return j;
}

json UsageChunkJson(const ResponseContext& ctx, json usage) {
  json j = Envelope(ctx, /*chunk=*/true);
  j["choices"] = json::array();
  j["usage"] = std::move(usage);
  return j;
}

json UsageChunkJson(const ResponseContext& ctx, const v1::GenerateComplete& complete) {
  return UsageChunkJson(ctx, UsageJson(complete));
}

std::string ModelId(const std::string& model_name, const v1::ModelInfo& info) {
  if (!model_name.empty()) return model_name;
  return info.served_name().empty() ? "model" : info.served_name();  // the server's ServedModelName
}

json ModelJson(const std::string& id, const v1::ModelInfo& info, int64_t created) {
  return {{"id", id},
          {"object", "model"},
          {"created", created},
          {"owned_by", "asl-serve"},
          {"root", id},
          {"parent", nullptr},
          {"max_model_len", info.context_length()},
          {"asl",
           {{"name", info.name()},
            {"arch", info.arch()},
            {"device", info.device()},
            {"dtype", info.dtype()},
            {"num_layers", info.num_layers()},
            {"vocab_size", info.vocab_size()},
            {"max_prompt_tokens", info.max_prompt_tokens()},
            {"kv_blocks_total", info.kv_blocks_total()},
            {"kv_block_size", info.kv_block_size()},
            {"kv_bytes_total", info.kv_bytes_total()},
            {"kv_dtype", info.kv_dtype()},
            {"decode_activations", info.decode_activations()},
            {"policies", json(info.policies())}}}};
}

std::string SseEvent(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace asl::gateway

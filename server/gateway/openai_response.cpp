#include "server/gateway/openai_response.h"

namespace asl::gateway {
namespace {

using nlohmann::json;

std::string TokenName(int32_t id) { return "token_id:" + std::to_string(id); }

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

json Choice(const ResponseContext& ctx, const std::string& text, json logprobs, json finish_reason, bool delta,
            bool with_role) {
  json c = {{"index", 0}};
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

}  // namespace

void LogprobsBuilder::Append(const v1::GenerateChunk& chunk, size_t text_offset) {
  if (!ctx_.logprobs) return;
  const bool chat = ctx_.endpoint == Endpoint::kChatCompletions;
  for (int k = 0; k < chunk.logprobs_size(); ++k) {
    const v1::TokenLogprob& lp = chunk.logprobs(k);
    json top = chat ? json::array() : json::object();
    if (k < chunk.top_logprobs_size()) {
      const auto& cands = chunk.top_logprobs(k).candidates();
      for (int c = 0; c < cands.size() && c < ctx_.top_logprobs; ++c) {
        if (chat) {
          top.push_back({{"token", TokenName(cands[c].token_id())}, {"logprob", cands[c].logprob()}, {"bytes", nullptr}});
        } else {
          top[TokenName(cands[c].token_id())] = cands[c].logprob();
        }
      }
    }
    if (chat) {
      content_.push_back({{"token", TokenName(lp.token_id())},
                          {"logprob", lp.logprob()},
                          {"bytes", nullptr},
                          {"top_logprobs", std::move(top)}});
    } else {
      tokens_.push_back(TokenName(lp.token_id()));
      token_logprobs_.push_back(lp.logprob());
      top_.push_back(ctx_.top_logprobs > 0 ? std::move(top) : json(nullptr));
      offsets_.push_back(text_offset);
    }
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

json CompletionJson(const ResponseContext& ctx, const std::string& text, json logprobs,
                    const v1::GenerateComplete& complete) {
  json j = Envelope(ctx, /*chunk=*/false);
  j["choices"] = json::array({Choice(ctx, text, std::move(logprobs), FinishReasonName(complete.finish_reason()),
                                     /*delta=*/false, /*with_role=*/true)});
  j["usage"] = UsageJson(complete);
  j["asl"] = AslJson(ctx.id, complete);
  return j;
}

json RoleChunkJson(const ResponseContext& ctx) {
  json j = Envelope(ctx, /*chunk=*/true);
  j["choices"] = json::array({Choice(ctx, "", nullptr, nullptr, /*delta=*/true, /*with_role=*/true)});
  return j;
}

json DeltaChunkJson(const ResponseContext& ctx, const std::string& text, json logprobs) {
  json j = Envelope(ctx, /*chunk=*/true);
  j["choices"] = json::array({Choice(ctx, text, std::move(logprobs), nullptr, /*delta=*/true, /*with_role=*/false)});
  return j;
}

json FinishChunkJson(const ResponseContext& ctx, const v1::GenerateComplete& complete) {
  json j = Envelope(ctx, /*chunk=*/true);
  json c = Choice(ctx, "", nullptr, FinishReasonName(complete.finish_reason()), /*delta=*/true, /*with_role=*/false);
  if (ctx.endpoint == Endpoint::kChatCompletions) c["delta"] = json::object();
  j["choices"] = json::array({std::move(c)});
  j["asl"] = AslJson(ctx.id, complete);
  return j;
}

json UsageChunkJson(const ResponseContext& ctx, const v1::GenerateComplete& complete) {
  json j = Envelope(ctx, /*chunk=*/true);
  j["choices"] = json::array();
  j["usage"] = UsageJson(complete);
  return j;
}

std::string SseEvent(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace asl::gateway

// JSON bodies of OpenAI responses built from asl-server's GenerateResponse stream: chat.completion,
// chat.completion.chunk and text_completion objects, `usage`, and the `asl` extension object with
// the pruning report and server-side timings.
//
// Tokens in logprobs are written "token_id:<id>" (vLLM's return_tokens_as_token_ids format): the
// gateway has no tokenizer, and a chunk's text need not split at token boundaries.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "asl/v1/generation.pb.h"
#include "server/gateway/openai_request.h"

namespace asl::gateway {

// What every response object of one request shares.
struct ResponseContext {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string id;        // "chatcmpl-..." or "cmpl-..."; also the gRPC request_id
  int64_t created = 0;   // Unix seconds
  std::string model;
  bool logprobs = false;
  int top_logprobs = 0;
};

// Logprobs of one choice in the endpoint's format: chat {"content": [{token, logprob, bytes,
// top_logprobs}]}, legacy {tokens, token_logprobs, top_logprobs, text_offset}.
class LogprobsBuilder {
 public:
  explicit LogprobsBuilder(const ResponseContext& ctx) : ctx_(ctx) {}
  // Adds the chunk's tokens; `text_offset` is where the chunk's text starts in the completion.
  void Append(const v1::GenerateChunk& chunk, size_t text_offset);
  // The logprobs so far (null when not requested) and a fresh start: streaming sends each chunk's
  // own logprobs.
  [[nodiscard]] nlohmann::json Take();

 private:
  const ResponseContext& ctx_;
  nlohmann::json content_ = nlohmann::json::array();  // chat
  nlohmann::json tokens_ = nlohmann::json::array(), token_logprobs_ = nlohmann::json::array(),
                 top_ = nlohmann::json::array(), offsets_ = nlohmann::json::array();  // legacy
};

[[nodiscard]] const char* FinishReasonName(v1::FinishReason reason);
[[nodiscard]] nlohmann::json UsageJson(const v1::GenerateComplete& complete);
// {"request_id", "finish_reason", "stop_string", "num_preemptions", "kv_tokens_kept",
//  "kv_tokens_full", "timings": {...}, "pruning": {policy, outcome, selection_layer, ...}}
[[nodiscard]] nlohmann::json AslJson(const std::string& request_id, const v1::GenerateComplete& complete);

// Non-streaming response: the whole completion.
[[nodiscard]] nlohmann::json CompletionJson(const ResponseContext& ctx, const std::string& text,
                                            nlohmann::json logprobs, const v1::GenerateComplete& complete);

// Streaming chunks. Chat streams start with a role delta; every stream ends with the finish chunk
// (which carries `asl`), then, with stream_options.include_usage, a chunk with no choices and the
// usage.
[[nodiscard]] nlohmann::json RoleChunkJson(const ResponseContext& ctx);
[[nodiscard]] nlohmann::json DeltaChunkJson(const ResponseContext& ctx, const std::string& text, nlohmann::json logprobs);
[[nodiscard]] nlohmann::json FinishChunkJson(const ResponseContext& ctx, const v1::GenerateComplete& complete);
[[nodiscard]] nlohmann::json UsageChunkJson(const ResponseContext& ctx, const v1::GenerateComplete& complete);

// "data: <json>\n\n"
[[nodiscard]] std::string SseEvent(const nlohmann::json& j);

}  // namespace asl::gateway

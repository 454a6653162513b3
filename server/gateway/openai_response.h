// JSON bodies of OpenAI responses built from asl-server's GenerateResponse stream: chat.completion,
// chat.completion.chunk and text_completion objects, `usage`, and the `asl` extension object with
// the pruning report and server-side timings.
//
// Logprob tokens carry the text and bytes asl-server sends with each token (TokenLogprob.text and
// token_bytes): a generated token's text is what it adds to the output, so the tokens of a choice
// concatenate to its text (a token holding only the first bytes of a character has "" and its bytes;
// the token completing the character has all of it), and `bytes` are the token's own bytes, so the
// bytes of a choice's tokens concatenate to the UTF-8 of its text. Alternatives are the token decoded
// alone (an incomplete character as U+FFFD). Legacy text_offset counts characters (code points).
// With echo, the prompt's tokens (GenerateChunk.prompt_logprobs) come first, the first with a null
// logprob, as OpenAI returns them.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

#include "server/gateway/tool_calls.h"
#include <string>
#include <vector>

#include "asl/v1/generation.pb.h"
#include "server/gateway/openai_request.h"

namespace asl::gateway {

// What every response object of one request shares.
struct ResponseContext {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string id;        // "chatcmpl-..." or "cmpl-..."
  std::string request_id;  // x-request-id; also the gRPC request_id
  int64_t created = 0;   // Unix seconds
  std::string model;
  bool logprobs = false;
  int top_logprobs = 0;
  // The request field the output constraint came from (response_format, tool_choice, ...): the
  // server's errors about "sampling.constraint" name it.
  std::string constraint_param;
};

// Logprobs of one choice in the endpoint's format: chat {"content": [{token, logprob, bytes,
// top_logprobs}]}, legacy {tokens, token_logprobs, top_logprobs, text_offset}.
class LogprobsBuilder {
 public:
  explicit LogprobsBuilder(const ResponseContext& ctx) : ctx_(ctx) {}
  // Adds the chunk's tokens; each one's legacy text_offset is where its text starts in the
  // completion (the characters of the tokens before it).
  void Append(const v1::GenerateChunk& chunk);
  // The logprobs so far (null when not requested) and a fresh start: streaming sends each chunk's
  // own logprobs.
  [[nodiscard]] nlohmann::json Take();

 private:
  void Add(const v1::TokenLogprob& lp, const v1::TopLogprobs* alternatives, bool first_of_prompt);

  const ResponseContext& ctx_;
  int64_t offset_ = 0;  // characters of the tokens so far
  nlohmann::json content_ = nlohmann::json::array();  // chat
  nlohmann::json tokens_ = nlohmann::json::array(), token_logprobs_ = nlohmann::json::array(),
                 top_ = nlohmann::json::array(), offsets_ = nlohmann::json::array();  // legacy
};

[[nodiscard]] const char* FinishReasonName(v1::FinishReason reason);
[[nodiscard]] nlohmann::json UsageJson(const v1::GenerateComplete& complete);
// The usage of several generations: prompt tokens once per prompt (`prompt_of[i]` is generation i's
// prompt), completion tokens of all (best_of candidates included, as OpenAI bills them).
[[nodiscard]] nlohmann::json UsageJson(const std::vector<const v1::GenerateComplete*>& completes,
                                       const std::vector<int>& prompt_of);
// {"request_id", "finish_reason", "stop_string", "num_preemptions", "kv_tokens_kept",
//  "kv_tokens_full", "timings": {...}, "pruning": {policy, outcome, selection_layer, ...}}
[[nodiscard]] nlohmann::json AslJson(const std::string& request_id, const v1::GenerateComplete& complete);

// One returned choice of a non-streamed response.
struct ChoiceOut {
  int index = 0;
  std::string text;
  nlohmann::json logprobs;  // null when not requested
  const v1::GenerateComplete* complete = nullptr;
  // Chat: the tool calls parsed from the reply (then `text` is what was around them; whitespace
  // only: content null) and finish_reason "tool_calls".
  std::vector<ParsedToolCall> tool_calls;
};

// Non-streaming response: the whole completion. `asl` is the first choice's AslJson; with several
// choices `asl.choices` holds each one's, by index.
[[nodiscard]] nlohmann::json CompletionJson(const ResponseContext& ctx, const std::vector<ChoiceOut>& choices,
                                            nlohmann::json usage);
// One choice (index 0).
[[nodiscard]] nlohmann::json CompletionJson(const ResponseContext& ctx, const std::string& text,
                                            nlohmann::json logprobs, const v1::GenerateComplete& complete);

// Streaming chunks, per choice index. Chat streams start each choice with a role delta; every
// choice ends with its finish chunk (which carries `asl`), then, with stream_options.include_usage,
// a chunk with no choices and the usage.
[[nodiscard]] nlohmann::json RoleChunkJson(const ResponseContext& ctx, int index = 0);
[[nodiscard]] nlohmann::json DeltaChunkJson(const ResponseContext& ctx, const std::string& text, nlohmann::json logprobs,
                                            int index = 0);
// Chat: a delta with tool calls, numbered from `first` within the choice (OpenAI's tool_calls[].index).
[[nodiscard]] nlohmann::json ToolCallsChunkJson(const ResponseContext& ctx, const std::vector<ParsedToolCall>& calls,
                                                int first, int index = 0);
// `tool_calls`: the choice called tools, so its finish_reason "stop" reads "tool_calls".
[[nodiscard]] nlohmann::json FinishChunkJson(const ResponseContext& ctx, const v1::GenerateComplete& complete,
                                             int index = 0, bool tool_calls = false);
[[nodiscard]] nlohmann::json UsageChunkJson(const ResponseContext& ctx, nlohmann::json usage);
[[nodiscard]] nlohmann::json UsageChunkJson(const ResponseContext& ctx, const v1::GenerateComplete& complete);

// The id /v1/models lists: `model_name` (--model-name) when set, else the stem of the file (or the
// directory) the model was loaded from, with anything outside [A-Za-z0-9._-] replaced by '-': never
// a local path, never a space.
[[nodiscard]] std::string ModelId(const std::string& model_name, const v1::ModelInfo& info);
// One entry of /v1/models (and GET /v1/models/{id}): OpenAI's {id, object, created, owned_by} plus
// vLLM's root and max_model_len and the `asl` extension (no local paths).
[[nodiscard]] nlohmann::json ModelJson(const std::string& id, const v1::ModelInfo& info, int64_t created);

// "data: <json>\n\n"
[[nodiscard]] std::string SseEvent(const nlohmann::json& j);

}  // namespace asl::gateway

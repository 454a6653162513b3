// Parsing of OpenAI request bodies (POST /v1/chat/completions, /v1/completions) into asl-server's
// GenerateRequest. Everything is checked here as far as types and OpenAI's own limits go; ranges
// the server owns (top_p, penalties, pruning knobs) are left to the server, whose INVALID_ARGUMENT
// message is mapped back to the OpenAI field name (errors.h).
//
// asl extensions accepted in the body: top_k, min_p, repetition_penalty, ignore_eos,
// stop_token_ids, add_generation_prompt (chat), add_bos (completions) and a `pruning` object
// {<knob>..., detailed_report}: every knob of engine/common/pruning_knobs.h (policy, window, tau,
// ...) by its name, mapped to the proto field of that name. Unknown keys inside `pruning` are
// errors; unknown top-level keys are ignored, as OpenAI-compatible servers do.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "asl/v1/generation.pb.h"
#include "server/gateway/errors.h"

namespace asl::gateway {

enum class Endpoint { kChatCompletions, kCompletions };

// A request ready to send, plus what shapes the response.
struct ParsedRequest {
  v1::GenerateRequest grpc;   // prompt, sampling, pruning; request_id left for the caller
  std::string model;          // as the client named it
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // return the sampled tokens' logprobs
  int top_logprobs = 0;        // alternatives per token to return (chat: top_logprobs; legacy: logprobs)
};

// Parses `body`. On failure returns false and fills `error` (HTTP 400 naming the field).
[[nodiscard]] bool ParseRequest(Endpoint endpoint, const std::string& body, ParsedRequest* out, ApiError* error);

}  // namespace asl::gateway

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
#include <vector>

#include "asl/v1/generation.pb.h"
#include "server/gateway/errors.h"
#include "server/gateway/tool_calls.h"

namespace asl::gateway {

enum class Endpoint { kChatCompletions, kCompletions };

// Most generations one request may ask for: prompts x best_of (or n).
inline constexpr int kMaxChoices = 64;
inline constexpr size_t kMaxBatchPrompts = 64;

// A request ready to send, plus what shapes the response.
struct ParsedRequest {
  v1::GenerateRequest grpc;   // prompt (the first, for a batch), sampling, pruning; request_id left for the caller
  // Completions: each prompt of the batch (only the input set), in order; empty for chat.
  std::vector<v1::GenerateRequest> prompts;
  std::string model;          // as the client named it
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // return the sampled tokens' logprobs
  int top_logprobs = 0;        // alternatives per token to return (chat: top_logprobs; legacy: logprobs)
  int n = 1;                   // choices per prompt
  int best_of = 1;             // generations per prompt (>= n): the n with the highest summed logprob are returned
  bool echo = false;           // completions: the prompt's text before the completion
  // Chat with tools and tool_choice other than "none": the replies are parsed for tool calls.
  bool parse_tool_calls = false;
  // tool_choice "required" (kRequired) or {"type": "function", "function": {"name": ...}} (kNamed,
  // forced_function the name): the output is constrained to the calls' JSON and parsed as such.
  ToolCallFormat forced_tool = ToolCallFormat::kNone;
  std::string forced_function;
  // The field that set grpc.sampling.structured_output ("response_format", "tool_choice", ...).
  std::string constraint_param;
};

// Parses `body`. On failure returns false and fills `error` (HTTP 400 naming the field).
[[nodiscard]] bool ParseRequest(Endpoint endpoint, const std::string& body, ParsedRequest* out, ApiError* error);

// One Generate call of a request: prompt p's k-th sample.
struct GenerationCall {
  v1::GenerateRequest grpc;
  int prompt_index = 0;
  int sample_index = 0;
};
// The calls a request makes, prompt by prompt, best_of samples each (a seeded request's k-th sample
// uses seed + k, so samples differ; the server computes an identical prompt once).
[[nodiscard]] std::vector<GenerationCall> CallsFor(const ParsedRequest& parsed);

// POST /tokenize (vLLM's shape): {"prompt": "...", "add_special_tokens": true} or {"messages": [...],
// "add_generation_prompt": true}, "model" optional, plus "return_token_strs". Returns false and
// fills `error` (400 naming the field) on failure.
struct ParsedTokenize {
  v1::TokenizeRequest grpc;
  bool return_token_strs = false;
};
[[nodiscard]] bool ParseTokenizeRequest(const std::string& body, ParsedTokenize* out, ApiError* error);
// POST /detokenize: {"tokens": [ids...]}, "model" optional.
[[nodiscard]] bool ParseDetokenizeRequest(const std::string& body, v1::DetokenizeRequest* out, ApiError* error);

}  // namespace asl::gateway

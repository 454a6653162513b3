// Prompts of the load test: texts from a file (one per line) or built-in synthetic essay text,
// optionally cut to an exact number of tokens with the server's own tokenizer (Tokenize RPC).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "asl/v1/generation.grpc.pb.h"

namespace asl::loadtest {

// One prompt: text (sent as GenerateRequest.prompt) or token ids (sent as token_ids), never both.
struct Prompt {
  std::string text;
  std::vector<int32_t> token_ids;
};

struct PromptOptions {
  std::string file;        // one prompt per line; empty: the built-in essay text
  int64_t num_tokens = 0;  // > 0: every prompt is exactly this many tokens (BOS included)
  int64_t count = 1;       // prompts to make
  uint64_t seed = 0;       // picks where each prompt starts in the text
};

// Builds `count` prompts. With num_tokens > 0 the source text is tokenized once by the server
// (repeated until long enough) and each prompt is a window of it starting at a seeded offset,
// so prompts differ but have the same length. Returns false with `error` filled on failure.
[[nodiscard]] bool MakePrompts(const PromptOptions& options, v1::Generation::Stub& stub, std::vector<Prompt>* out,
                               std::string* error);

}  // namespace asl::loadtest

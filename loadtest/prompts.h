// Prompts of the load test: texts from a file (one per line) or built-in synthetic essay text,
// optionally cut to an exact number of tokens with the server's own tokenizer (asl-server's
// Tokenize RPC, or llama-server's POST /tokenize in the HTTP mode), or token ids read from a JSON
// file that an earlier run saved (--save-prompts), so that different servers get identical ids.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

// Tokenizes `text` (prepending BOS when add_bos and the model's tokenizer asks for one).
using Tokenizer =
    std::function<bool(const std::string& text, bool add_bos, std::vector<int32_t>* ids, std::string* error)>;

// asl-server's Tokenize RPC.
[[nodiscard]] Tokenizer GrpcTokenizer(v1::Generation::Stub& stub);

// Builds `count` prompts. With num_tokens > 0 the source text is tokenized once by `tokenize`
// (repeated until long enough) and each prompt is a window of it starting at a seeded offset,
// so prompts differ but have the same length. Returns false with `error` filled on failure.
[[nodiscard]] bool MakePrompts(const PromptOptions& options, const Tokenizer& tokenize, std::vector<Prompt>* out,
                               std::string* error);

// A prompts file: {"prompts": [[ids...] or "text", ...]} (extra keys are ignored; a bare array
// is accepted too). Write records `meta` beside the prompts.
[[nodiscard]] bool ReadPromptsFile(const std::string& path, std::vector<Prompt>* out, std::string* error);
[[nodiscard]] bool WritePromptsFile(const std::string& path, const std::vector<Prompt>& prompts,
                                    const nlohmann::json& meta, std::string* error);

}  // namespace asl::loadtest

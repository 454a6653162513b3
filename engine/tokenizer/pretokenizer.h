// The regex pre-tokenizer of byte-level BPE: splits text into the pieces that BPE never merges
// across. Internal to asl_tokenizer.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/status.h"

namespace asl::tok {

// Hugging Face tokenizers' ByteLevel(use_regex=true) pattern (the GPT-2 split).
inline constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Digits(individual_digits=true): every numeric character alone.
inline constexpr const char* kDigitsRegex = R"(\p{N})";

// The split regexes, applied in order, for a GGUF `tokenizer.ggml.pre` name (llama.cpp's
// llama-vocab.cpp groups); nullopt for a name we do not know.
std::optional<std::vector<std::string>> PreTokenizerRegexes(std::string_view pre);

// A chain of PCRE2 (UTF + UCP, JIT) regexes. Each regex splits every current piece into its matches
// and the gaps between them ("Isolated" in Hugging Face's Split), so the pieces always concatenate
// back to the input. Immutable after Create; Split may run on many threads at once.
class PreTokenizer {
 public:
  [[nodiscard]] static StatusOr<std::unique_ptr<PreTokenizer>> Create(const std::vector<std::string>& regexes);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Appends the pieces of `text` (valid UTF-8; views into `text`) to `pieces`.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

 private:
  struct Regex;
  PreTokenizer() = default;
  std::vector<Regex> regexes_;
};

}  // namespace asl::tok

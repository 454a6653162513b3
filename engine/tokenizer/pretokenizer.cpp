#define PCRE2_CODE_UNIT_WIDTH 8
#include "engine/tokenizer/pretokenizer.h"

#include <pcre2.h>

#include "engine/common/logging.h"

namespace asl::tok {

struct PreTokenizer::Regex {
  std::string pattern;
  pcre2_code* code = nullptr;
  bool jit = false;
};

std::optional<std::vector<std::string>> PreTokenizerRegexes(std::string_view pre) {
  if (pre.empty() || pre == "default" || pre == "gpt-2" || pre == "gpt2" || pre == "mpt" || pre == "olmo" ||
      pre == "jais")
    return std::vector<std::string>{kGpt2Regex};
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "smaug-bpe" || pre == "dbrx")
    return std::vector<std::string>{kLlama3Regex};
  if (pre == "qwen2" || pre == "stablelm2" || pre == "deepseek-r1-qwen") return std::vector<std::string>{kQwen2Regex};
  // SmolLM2's tokenizer.json is Sequence[Digits(individual_digits), ByteLevel].
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" || pre == "codeshell" ||
      pre == "exaone" || pre == "minerva-7b")
    return std::vector<std::string>{kDigitsRegex, kGpt2Regex};
  return std::nullopt;
}

StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(const std::vector<std::string>& regexes) {
  std::unique_ptr<PreTokenizer> pt(new PreTokenizer());
  for (const std::string& pattern : regexes) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return InvalidArgument("pre-tokenizer regex '" + pattern + "' at offset " + std::to_string(err_offset) + ": " +
                             reinterpret_cast<const char*>(msg));
    }
    // JIT is an optimisation only: where it is unavailable pcre2_match interprets the pattern.
    const bool jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    pt->regexes_.push_back(Regex{pattern, code, jit});
  }
  return pt;
}

PreTokenizer::~PreTokenizer() {
  for (Regex& r : regexes_) pcre2_code_free(r.code);
}

namespace {

struct MatchDataDeleter {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

// Splits `piece` by `code` into matches and gaps.
void SplitOne(const pcre2_code* code, std::string_view piece, pcre2_match_data* md,
              std::vector<std::string_view>* out) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
  const size_t n = piece.size();
  size_t piece_start = 0;  // start of the text not yet emitted
  size_t search = 0;       // where the next match attempt starts
  while (search < n) {
    // The text was validated once (Tokenizer::Encode); re-checking it at every call would make the
    // loop quadratic.
    int rc = pcre2_match(code, subject, n, search, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // fall back to the interpreter
      rc = pcre2_match(code, subject, n, search, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    }
    if (rc < 0) {
      if (rc != PCRE2_ERROR_NOMATCH) ASL_LOG_WARN("pre-tokenizer: pcre2_match failed ({}); keeping the rest whole", rc);
      break;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t start = ov[0], end = ov[1];
    if (end == start) {  // an empty match splits nothing: search again one character later
      search = start + 1;
      while (search < n && (static_cast<unsigned char>(piece[search]) & 0xC0) == 0x80) ++search;
      continue;
    }
    if (start > piece_start) out->push_back(piece.substr(piece_start, start - piece_start));
    out->push_back(piece.substr(start, end - start));
    piece_start = search = end;
  }
  if (piece_start < n) out->push_back(piece.substr(piece_start));
}

}  // namespace

void PreTokenizer::Split(std::string_view text, std::vector<std::string_view>* pieces) const {
  if (text.empty()) return;
  if (regexes_.empty()) {
    pieces->push_back(text);
    return;
  }
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create(1, nullptr));
  std::vector<std::string_view> cur{text}, next;
  for (size_t r = 0; r < regexes_.size(); ++r) {
    std::vector<std::string_view>* dst = r + 1 == regexes_.size() ? pieces : &next;
    if (dst == &next) next.clear();
    for (std::string_view p : cur) SplitOne(regexes_[r].code, p, md.get(), dst);
    if (dst == &next) cur.swap(next);
  }
}

}  // namespace asl::tok

// Structured output on xgrammar: see grammar.h. xgrammar reports bad specs and internal failures by
// throwing (std::runtime_error subclasses); Compile turns them into InvalidArgument, and a throw from
// a matcher call (a broken invariant in xgrammar) marks that one request's state failed: Accept then
// returns false and the engine fails the request, never the engine thread.
#include "engine/sample/grammar.h"

#include <dlpack/dlpack.h>
#include <xgrammar/xgrammar.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>

namespace asl::sample {

class CompiledConstraint {
 public:
  explicit CompiledConstraint(xgrammar::CompiledGrammar g) : grammar(std::move(g)) {}
  xgrammar::CompiledGrammar grammar;
};

struct GrammarCompiler::Impl {
  Impl(const std::vector<std::string>& token_bytes, int64_t vocab_size, const std::vector<TokenId>& stop_tokens,
       int num_threads, int64_t max_cache_bytes)
      : info(token_bytes, xgrammar::VocabType::RAW, static_cast<int>(vocab_size),
             std::vector<int32_t>(stop_tokens.begin(), stop_tokens.end())),
        compiler(info, std::clamp(num_threads, 1, 8), /*cache_enabled=*/true, max_cache_bytes) {}
  xgrammar::TokenizerInfo info;
  xgrammar::GrammarCompiler compiler;
};

GrammarCompiler::GrammarCompiler(const std::vector<std::string>& token_bytes, int64_t vocab_size,
                                 const std::vector<TokenId>& stop_tokens, int num_threads, int64_t max_cache_bytes)
    : impl_(std::make_unique<Impl>(token_bytes, vocab_size, stop_tokens, num_threads, max_cache_bytes)),
      vocab_size_(vocab_size) {}

GrammarCompiler::~GrammarCompiler() = default;

StatusOr<std::shared_ptr<const CompiledConstraint>> GrammarCompiler::Compile(const OutputConstraint& c) {
  if (c.kind == ConstraintKind::kNone) return std::shared_ptr<const CompiledConstraint>();
  // JSON in compact form (no free whitespace between tokens): a small model given the freedom to
  // emit whitespace can loop on it until max_tokens; vLLM's xgrammar backend makes the same choice
  // for models that tend to (any_whitespace=false).
  constexpr bool kAnyWhitespace = false;
  try {
    xgrammar::GrammarCompiler& xc = impl_->compiler;
    switch (c.kind) {
      case ConstraintKind::kJsonObject:  // any object: keys are free (not strict)
        return std::make_shared<const CompiledConstraint>(
            xc.CompileJSONSchema(R"({"type": "object"})", kAnyWhitespace, std::nullopt, std::nullopt,
                                 /*strict_mode=*/false));
      case ConstraintKind::kJsonSchema:
        // strict_mode (xgrammar's and vLLM's default): properties and array items the schema does
        // not declare are not generated, so the output still validates against the schema while a
        // small model cannot wander into keys nobody asked for.
        return std::make_shared<const CompiledConstraint>(
            xc.CompileJSONSchema(c.spec, kAnyWhitespace, std::nullopt, std::nullopt, /*strict_mode=*/true));
      case ConstraintKind::kRegex:
        return std::make_shared<const CompiledConstraint>(xc.CompileRegex(c.spec));
      case ConstraintKind::kGrammar:
        return std::make_shared<const CompiledConstraint>(xc.CompileGrammar(c.spec, "root"));
      case ConstraintKind::kStructuralTag:
        return std::make_shared<const CompiledConstraint>(xc.CompileStructuralTag(c.spec));
      case ConstraintKind::kNone:
        break;
    }
  } catch (const std::exception& ex) {
    std::string what = ex.what();
    // xgrammar's FATAL messages start with "[time] file:line: "; the reason is what follows.
    if (const size_t p = what.find(".cc:"); p != std::string::npos) {
      const size_t colon = what.find(": ", p);
      if (colon != std::string::npos) what = what.substr(colon + 2);
    }
    while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
    return InvalidArgument(std::string("sampling.constraint: invalid ") + ConstraintKindName(c.kind) + ": " + what);
  }
  return InvalidArgument("sampling.constraint: unknown kind");
}

struct GrammarState::Impl {
  Impl(const xgrammar::CompiledGrammar& g, const std::vector<TokenId>& end_tokens)
      : matcher(g, std::vector<int>(end_tokens.begin(), end_tokens.end())),
        vocab_size(g.GetTokenizerInfo().GetVocabSize()) {}
  xgrammar::GrammarMatcher matcher;
  int vocab_size;
  std::string error;  // set once a matcher call threw; the state is unusable after
};

GrammarState::GrammarState(std::shared_ptr<const CompiledConstraint> grammar, const std::vector<TokenId>& end_tokens)
    : impl_(std::make_unique<Impl>(grammar->grammar, end_tokens)) {}

GrammarState::~GrammarState() = default;

bool GrammarState::Mask(float* logits, int64_t vocab_size) {
  // One bitmask per thread (rows are masked on libtorch's intra-op workers, one row each).
  thread_local std::vector<int32_t> bits;
  const int32_t words = xgrammar::GetBitmaskSize(impl_->vocab_size);
  bits.assign(static_cast<size_t>(words), -1);
  int64_t shape[1] = {words};
  DLTensor t{};
  t.data = bits.data();
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = 1;
  t.dtype = DLDataType{kDLInt, 32, 1};
  t.shape = shape;
  t.strides = nullptr;
  t.byte_offset = 0;
  if (!impl_->error.empty()) return false;
  try {
    if (!impl_->matcher.FillNextTokenBitmask(&t)) return false;
  } catch (const std::exception& e) {
    impl_->error = std::string("xgrammar: ") + e.what();
    return false;
  }
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t n = std::min<int64_t>(vocab_size, impl_->vocab_size);
  for (int32_t w = 0; w < words; ++w) {
    const auto word = static_cast<uint32_t>(bits[w]);
    if (word == 0xFFFFFFFFu) continue;
    const int64_t base = static_cast<int64_t>(w) * 32;
    for (int b = 0; b < 32 && base + b < n; ++b) {
      if (!(word >> b & 1u)) logits[base + b] = kNegInf;
    }
  }
  for (int64_t i = n; i < vocab_size; ++i) logits[i] = kNegInf;  // ids the grammar's vocabulary lacks
  return true;
}

bool GrammarState::Accept(TokenId token) {
  if (!impl_->error.empty()) return false;
  try {
    return impl_->matcher.AcceptToken(token);
  } catch (const std::exception& e) {
    impl_->error = std::string("xgrammar: ") + e.what();
    return false;
  }
}

bool GrammarState::terminated() const { return impl_->error.empty() && impl_->matcher.IsTerminated(); }

const std::string& GrammarState::error() const { return impl_->error; }

}  // namespace asl::sample

// Structured output: a request's OutputConstraint compiled into a grammar over the model's
// vocabulary, and the per-request matcher that turns it into a token mask at every step. Built on
// xgrammar (third-party, cmake/xgrammar.cmake): its GrammarCompiler precomputes, per grammar, which
// tokens each grammar position can take, and its GrammarMatcher keeps the parse state (a pushdown
// automaton) of one output.
//
// The vocabulary xgrammar sees is the tokens' raw bytes, as the detokenizer emits them: control
// tokens are empty (xgrammar then never allows them inside the text), and ids past the tokenizer's
// vocabulary up to the logits' width are masked always. The end tokens (the model's stop tokens
// and the request's stop_token_ids) are allowed exactly when the grammar is complete.
//
// Threads: a GrammarCompiler may compile on many threads at once (Submit runs on the server's
// threads; xgrammar's compiler is thread-safe and caches compiled grammars by spec). A
// GrammarState belongs to one request; its calls are serialised by the engine thread's step (the
// mask is filled on an intra-op worker while the engine thread waits). Neither throws.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/common/status.h"
#include "engine/request.h"

namespace asl::sample {

class CompiledConstraint;  // a compiled grammar (xgrammar::CompiledGrammar), shared and immutable

class GrammarCompiler {
 public:
  // token_bytes: id -> the raw bytes the token adds to the text ("" for control tokens);
  // vocab_size: the width of the logits (>= token_bytes.size()); stop_tokens: the model's end
  // tokens. num_threads: per compilation. max_cache_bytes bounds the cache of compiled grammars
  // (least recently used go first).
  GrammarCompiler(const std::vector<std::string>& token_bytes, int64_t vocab_size,
                  const std::vector<TokenId>& stop_tokens, int num_threads, int64_t max_cache_bytes);
  ~GrammarCompiler();

  // InvalidArgument naming sampling.constraint with xgrammar's reason for a spec it cannot compile
  // (a schema it does not support, a regex or grammar syntax error). kNone gives nullptr.
  [[nodiscard]] StatusOr<std::shared_ptr<const CompiledConstraint>> Compile(const OutputConstraint& constraint);

  int64_t vocab_size() const { return vocab_size_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t vocab_size_;
};

class GrammarState {
 public:
  // end_tokens: the ids that end the output once the grammar is complete.
  GrammarState(std::shared_ptr<const CompiledConstraint> grammar, const std::vector<TokenId>& end_tokens);
  ~GrammarState();
  GrammarState(const GrammarState&) = delete;
  GrammarState& operator=(const GrammarState&) = delete;

  // Sets logits[i] = -inf for every token the grammar does not allow next; `logits` has
  // vocab_size entries. Returns false, touching nothing, when every token is allowed.
  bool Mask(float* logits, int64_t vocab_size);
  // Advances the parse by the token the sampler chose; false when the grammar does not allow it
  // (then the state is unchanged) or the state failed.
  [[nodiscard]] bool Accept(TokenId token);
  // The grammar is complete and has accepted an end token: the output is over.
  bool terminated() const;
  // Why the state failed (an exception inside xgrammar), or "" while it works.
  const std::string& error() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace asl::sample

// Plain C++ types that cross the engine's boundary: what a request asks for and what its sink
// receives. No libtorch, gRPC or JSON here: the server includes only this and engine.h (the gateway
// only pruning_knobs.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/common/pruning_knobs.h"
#include "engine/common/status.h"

namespace asl {

using RequestId = uint64_t;
using TokenId = int32_t;

// ---- pruning (docs: ../shared/docs/asl-method.md, docs/asl-method.md) ----------------------------
// PolicyKind, Pooling, PruningParams and the tables of policies and knobs: pruning_knobs.h.

// Fills the -1 layer knobs from the model depth and checks every constraint of asl-method.md §1.
// The error message names the offending parameter.
Status ResolvePruningParams(PruningParams* params, int num_layers);

// ---- sampling and stopping ----------------------------------------------------------------------
// Structured output (docs/structured_output.md): the generated text must match a grammar, enforced
// by a token mask in the sampler (xgrammar). The spec is compiled when the request is submitted; an
// invalid one fails Submit with InvalidArgument naming sampling.constraint.
enum class ConstraintKind {
  kNone,           // free text
  kJsonObject,     // any JSON object (OpenAI response_format json_object); spec unused
  kJsonSchema,     // spec: a JSON Schema, as JSON text
  kRegex,          // spec: a regular expression the whole output matches
  kGrammar,        // spec: an EBNF grammar (xgrammar's dialect of GBNF; the rule "root" starts it)
  kStructuralTag,  // spec: an xgrammar structural tag, as JSON text
};
const char* ConstraintKindName(ConstraintKind kind);

struct OutputConstraint {
  ConstraintKind kind = ConstraintKind::kNone;
  std::string spec;
};

struct SamplingParams {
  double temperature = 0.0;          // 0 = greedy
  double top_p = 1.0;                // (0, 1]
  int top_k = 0;                     // 0 = off
  double min_p = 0.0;                // [0, 1]
  std::optional<uint64_t> seed;      // same seed, same output, whatever the batch
  double repetition_penalty = 1.0;   // > 0; 1 = off (HF semantics, over prompt and output)
  double presence_penalty = 0.0;     // [-2, 2] (OpenAI semantics, over output)
  double frequency_penalty = 0.0;    // [-2, 2]
  // >= 1; 0: as many as the context leaves after the prompt, capped to what the KV pool can hold
  // for this request alone (resolved by Submit; under reserve admission it reserves all of that).
  int max_tokens = 256;
  std::vector<std::string> stop;     // stop strings: matched across tokens, never emitted
  std::vector<TokenId> stop_token_ids;
  bool ignore_eos = false;
  int logprobs = 0;                  // top-n logprobs per generated token, 0..20
  // OpenAI logit_bias: (token id, bias in [-100, 100]) added to the logits after the penalties,
  // before greedy/temperature (ids unique, in the vocabulary). Logprobs stay those of the raw logits.
  std::vector<std::pair<TokenId, float>> logit_bias;
  // The output's grammar; applied after logit_bias: tokens it does not allow next get -inf. A request
  // whose grammar has accepted an end token finishes (kStop), even with ignore_eos.
  OutputConstraint constraint;
};

Status ValidateSamplingParams(const SamplingParams& p, int64_t vocab_size);

struct GenerateRequest {
  std::string client_id;             // the caller's id (for logs); the engine assigns RequestId
  std::vector<TokenId> prompt_ids;
  SamplingParams sampling;
  PruningParams pruning;
  // Use the prefix cache for this prompt and offer its KV to it (llama.cpp's cache_prompt).
  bool cache_prompt = true;
  // -1: none. 0..20: the logprob of every prompt token (from the second) and that many alternatives,
  // in the first TokenChunk (OpenAI's echo with logprobs). Needs a policy that never cuts the
  // prompt's rows (full, snapkv); the prompt is then computed whole (no prefix-cache hit).
  int prompt_logprobs = -1;
};

// ---- what comes back ----------------------------------------------------------------------------
struct TokenLogprob {
  TokenId token_id = 0;
  float logprob = 0.f;
  // Filled by the OutputProcessor (the sampler leaves them empty). Sampled token: the text it adds
  // to the output as the output is detokenized (the characters it completes: "" for a token that
  // holds only the first bytes of a character, "" for a control token the text skips), so a
  // request's token texts concatenate to its text before stop strings are withheld; `bytes` its
  // own bytes in the output (empty when skipped). Alternative: the token decoded alone (an
  // incomplete character as U+FFFD, a control token as its text) and its raw bytes.
  std::string text;
  std::string bytes;
};

struct TokenChunk {
  std::vector<TokenId> token_ids;    // new tokens since the last chunk
  std::string text;                  // their text: valid UTF-8, stop strings withheld
  // For each token in token_ids, when logprobs > 0: its own logprob and the top-n alternatives.
  std::vector<TokenLogprob> sampled_logprobs;
  std::vector<std::vector<TokenLogprob>> top_logprobs;
  // In the request's first chunk, when prompt_logprobs >= 0: one entry per prompt token, its text as
  // the prompt decodes (control tokens included); the first has logprob 0 and no alternatives.
  std::vector<TokenLogprob> prompt_logprobs;
  std::vector<std::vector<TokenLogprob>> prompt_top_logprobs;
};

enum class FinishReason { kStop, kLength, kCancelled, kError, kAbort };
const char* FinishReasonName(FinishReason r);

enum class SelectionOutcome { kNone, kSelected, kForced, kNotApplicable };
const char* SelectionOutcomeName(SelectionOutcome o);

// asl-method.md §9.
struct PruningReport {
  PolicyKind policy = PolicyKind::kFull;
  SelectionOutcome outcome = SelectionOutcome::kNotApplicable;
  int selection_layer = -1;          // -1 when none
  int64_t num_prompt_tokens = 0;
  int64_t num_propagated_tokens = 0; // tokens present after the selection layer (= prompt if none)
  int64_t num_kv_tokens_kept = 0;    // Σ over layers of tokens stored per KV head after prefill
  int64_t num_kv_tokens_full = 0;    // what full KV would have stored: L * prompt
  int64_t kv_bytes = 0;              // bytes held for the prompt's KV after prefill
  // Wall time of the prefill slices this request took part in (shared with its batch-mates; the
  // decode steps between slices are not counted: TTFT has them).
  double prefill_seconds = 0.0;
  // Prefill compute of this request alone, machine-independent: Σ over layers (and both passes of
  // a two-pass policy) of the tokens the layer ran on; full = L * prompt. Tokens of a cached prefix
  // are not counted (they were not computed), the rows a cut recomputed for it are.
  int64_t prefill_token_layers = 0;
  // Engine steps the prefill took (layer-sliced prefill: one slice of whole layers per step).
  int num_prefill_slices = 0;
  std::vector<double> variance_ratios;  // ASL: ratio per evaluated layer, from L_min on
  std::vector<int64_t> selected_positions;  // original positions of the propagated tokens (if cut)
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t kv_tokens_kept = 0;
  int64_t cached_tokens = 0;         // prompt tokens whose KV came from the prefix cache
};

struct Timings {
  double queue_seconds = 0.0;        // submit -> first scheduled
  double ttft_seconds = 0.0;         // submit -> first token
  double e2e_seconds = 0.0;          // submit -> finish
  double mean_tpot_seconds = 0.0;    // mean time per output token after the first
  std::vector<double> inter_token_seconds;
};

struct FinishEvent {
  FinishReason reason = FinishReason::kStop;
  Status status;                     // non-OK when reason == kError
  std::string stop_string;           // the stop string that matched, if any
  Usage usage;
  Timings timings;
  PruningReport pruning;
  int num_preemptions = 0;
};

// Receives a request's output. Called on the engine thread: must not block and must not call back
// into the engine. OnFinish is called exactly once, last; OnTokens zero or more times before it.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void OnTokens(const TokenChunk& chunk) = 0;
  virtual void OnFinish(const FinishEvent& event) = 0;
};

}  // namespace asl

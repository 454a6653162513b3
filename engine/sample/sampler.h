// Sampling: one SamplerState per request (its RNG and the token counts its penalties need) and a
// batched Sample over a step's logits.
//
// Order of operations, per row (HF `generate` warper order, vLLM v1 penalty semantics):
//   1. repetition penalty (HF): over the prompt's and the output's distinct tokens, positive
//      logits are divided by the penalty and negative ones multiplied;
//   2. frequency and presence penalties (OpenAI): logit -= frequency * count + presence * (count>0),
//      over output tokens only; then logit_bias (OpenAI): logit += bias, per listed token; then the
//      structured-output grammar's mask (grammar.h): -inf for every token it does not allow next;
//   3. temperature == 0: greedy argmax (ties go to the lowest token id), no random draw;
//   4. otherwise logits / temperature, then top-k, then top-p (over what top-k kept, renormalised),
//      then min-p (p >= min_p * p_max), then one inverse-CDF draw from the request's own RNG.
// Ties in the sorted order used by top-k and top-p are broken by the lower token id, so a filter
// keeps exactly a prefix of (logit desc, id asc): with top_p = 0.5 over a uniform vocabulary of
// 1000 tokens, exactly the ids 0..499 survive.
//
// Logprobs follow vLLM's default (logprobs_mode = "raw_logprobs"): log_softmax of the logits as the
// model produced them, before penalties, temperature and filtering. They describe the model, not
// the sampler, so they are comparable across sampling settings.
//
// Reproducibility: a request's draws depend only on its seed, its own logits and the tokens it has
// observed, never on the rest of the batch or its row; rows are processed independently (in
// parallel over libtorch's intra-op threads) with per-request generators and per-row reductions in
// a fixed order.
//
// Thread: engine thread only (Sample may use libtorch's intra-op pool internally).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/request.h"
#include "engine/sample/grammar.h"

namespace asl::sample {

struct SampleResult {
  TokenId token_id = 0;
  // log_softmax(raw logits)[token_id]; filled only when the request asked for logprobs (> 0),
  // else 0 (computing it costs a full pass over the vocabulary).
  float logprob = 0.f;
  // The `logprobs` most likely tokens of the raw distribution, best first (ties: lower id first).
  std::vector<TokenLogprob> top_logprobs;
};

class SamplerState {
 public:
  // params must have passed ValidateSamplingParams. The seed is params.seed when set, else drawn
  // from std::random_device (so unseeded requests differ from each other).
  // grammar: the request's structured-output matcher, or null for free text.
  SamplerState(const SamplingParams& params, const std::vector<TokenId>& prompt_ids,
               std::unique_ptr<GrammarState> grammar = nullptr);
  ~SamplerState();

  // Records a token the engine accepted as output (frequency/presence/repetition penalties) and
  // advances the grammar by it. Sample does not call this: a preempted sequence replays outputs
  // without observing them again. False when the grammar rejects the token (the sampler chose it
  // from the mask, so that is a defect; the caller fails the request).
  [[nodiscard]] bool Observe(TokenId token_id);
  // The grammar has accepted an end token: the structured output is complete.
  bool grammar_terminated() const { return grammar_ && grammar_->terminated(); }
  // Why Observe returned false: the grammar's failure, or "" when it just did not allow the token.
  std::string grammar_error() const { return grammar_ ? grammar_->error() : std::string(); }

  // Applies steps 1-2 above in place to one row of `vocab_size` logits. Token ids outside
  // [0, vocab_size) are ignored. Public so tests can check the penalised logits exactly.
  void ApplyPenalties(float* logits, int64_t vocab_size) const;

  uint64_t seed() const { return seed_; }
  int64_t num_output_tokens() const { return num_output_tokens_; }

 private:
  friend std::vector<SampleResult> Sample(const at::Tensor& logits, std::vector<SamplerState*>& states);

  bool HasPenalties() const;
  // One row: `row` is a contiguous [V] float CPU tensor. Uses only this state and thread-local
  // scratch, so rows may run concurrently.
  SampleResult SampleRow(const at::Tensor& row);
  TokenId Draw(const float* x, int64_t vocab_size);
  double Uniform();  // [0, 1) with 53 random bits

  double temperature_;
  double top_p_;
  int top_k_;
  double min_p_;
  double repetition_penalty_;
  double presence_penalty_;
  double frequency_penalty_;
  std::vector<std::pair<TokenId, float>> logit_bias_;
  int logprobs_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  std::vector<TokenId> prompt_tokens_;                  // distinct prompt ids, sorted
  std::unordered_map<TokenId, int32_t> output_counts_;  // token id -> times generated
  int64_t num_output_tokens_ = 0;
  std::unique_ptr<GrammarState> grammar_;
};

// Samples one token per row. logits: [B, V] (float32 CPU contiguous is used as is; anything else is
// converted once). states[b] belongs to row b and must outlive the call; B == states.size() is an
// invariant (checked). Advances each non-greedy state's RNG by exactly one draw.
std::vector<SampleResult> Sample(const at::Tensor& logits, std::vector<SamplerState*>& states);

}  // namespace asl::sample

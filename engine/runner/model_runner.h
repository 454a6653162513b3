// ModelRunner: executes prefill and decode for a set of sequences on the model, writing what each
// layer keeps through the KV seam. Prefill packs several prompts into one varlen batch; each
// sequence's PruningPolicy decides per layer what it stores and when it is cut, and a cut sequence
// shrinks inside the packed batch while the others continue at full length (asl-method.md §8).
// Identical prompts in one batch (one prompt under several policies, or n completions of it) are
// computed once until their policies make them diverge.
//
// Thread: engine thread only. Errors from libtorch are turned into a Status for the whole call;
// the caller fails the affected requests, not the server.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "engine/common/status.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/llama_model.h"
#include "engine/prune/policy.h"

namespace asl::runner {

struct PrefillSeq {
  kv::SeqId seq = 0;                   // already registered in the KvCache, with empty layers
  std::vector<int32_t> prompt_ids;     // the prompt (all tokens; no prefix caching across steps)
  prune::PruningPolicy* policy = nullptr;  // owned by the caller; updated with the report
};

struct PrefillOutput {
  at::Tensor logits;                   // [S, vocab] float32 on CPU: the last prompt token's logits
  // Per sequence: the positions decoding continues at (n, or k after a two-pass re-index).
  std::vector<int64_t> next_positions;
  // Rows the layers computed, summed over layers and passes: identical prompts in the batch count
  // once until their policies make them diverge.
  int64_t token_layers = 0;
};

struct DecodeSeq {
  kv::SeqId seq = 0;
  int32_t token = 0;                   // the token to feed
  int64_t position = 0;                // its logical position
};

class ModelRunner {
 public:
  ModelRunner(const model::LlamaModel* model, kv::KvCache* kv) : model_(model), kv_(kv) {}

  // Runs the whole prompt of every sequence. On error the sequences' KV content is unspecified:
  // the caller frees them.
  StatusOr<PrefillOutput> Prefill(std::vector<PrefillSeq>& seqs);
  // One token per sequence; appends its K/V to every layer. -> logits [B, vocab] float32 on CPU.
  StatusOr<at::Tensor> Decode(const std::vector<DecodeSeq>& seqs);

  // KV tokens stored per KV head for a sequence, summed over layers.
  int64_t KvTokens(kv::SeqId seq) const;

 private:
  struct Active;  // a segment of the packed batch, shared by sequences with identical tokens
  // One segment per distinct (tokens, positions); the members of equal ones are joined.
  static std::vector<Active> MergeIdentical(std::vector<Active> batch);
  // Runs every layer over the packed batch. Sequences that go through all layers get their last
  // row in final_hidden[index]; those whose first pass ends are moved to second_pass. Adds the
  // rows computed to token_layers.
  Status RunPass(std::vector<Active> batch, std::vector<PrefillSeq>& seqs,
                 std::vector<at::Tensor>& final_hidden, std::vector<Active>& second_pass,
                 int64_t& token_layers);

  const model::LlamaModel* model_;
  kv::KvCache* kv_;
};

}  // namespace asl::runner

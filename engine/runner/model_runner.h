// ModelRunner: executes prefill and decode for a set of sequences on the model, writing what each
// layer keeps through the KV seam. A sequence whose prompt starts with a cached prefix computes only
// its other tokens, attending to the prefix's cached K/V (docs/architecture.md, "Prefix cache"). Prefill packs several prompts into one varlen batch; each
// sequence's PruningPolicy decides per layer what it stores and when it is cut, and a cut sequence
// shrinks inside the packed batch while the others continue at full length (asl-method.md §8).
// Identical prompts in one batch (one prompt under several policies, or n completions of it) are
// computed once until their policies make them diverge.
//
// A prefill is resumable (docs/architecture.md, "Layer-sliced prefill"): StartPrefill makes a
// PrefillJob, and each Advance runs as much of it as a work budget allows, so the engine can run
// decode steps between slices. A layer of the packed batch runs in fixed chunks of rows
// (PrefillOptions::chunk_rows; a chunk's queries attend the keys of its segment's earlier rows),
// and every policy decides only when the layer's last chunk is done, from all of the layer's keys
// and the window queries: the one-shot selection stays exact. The chunks are the same whatever the
// budget, so a prompt's logits, selection and stored KV are bit-identical whether it is prefilled
// in one Advance or in slices of any size.
//
// Thread: engine thread only. Errors from libtorch are turned into a Status for the whole call;
// the caller fails the affected requests, not the server.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <utility>
#include <vector>

#include "engine/common/status.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/llama_model.h"
#include "engine/prune/policy.h"

namespace asl::runner {

struct PrefillSeq {
  // Already registered in the KvCache, with empty layers, or with a pinned cached prefix of its
  // prompt (KvCache::PrefixTokens): then only the tokens after it are computed.
  kv::SeqId seq = 0;
  std::vector<int32_t> prompt_ids;     // the prompt (all tokens)
  // Owned by the caller; updated with the report. Never dereferenced once the sequence has left
  // the job (Advance's `keep` said no), so the caller may destroy it from then on.
  prune::PruningPolicy* policy = nullptr;
  // Offer the prompt's uncompressed K/V to the prefix cache (KvCache::CacheTable / CacheRows).
  bool cache_prompt = true;
  // >= 0: compute the prompt's logprobs with this many alternatives (PrefilledSeq::prompt_logprobs).
  // Needs every prompt row at the last layer: pass 1, never cut, no cached prefix (the engine asks
  // only for such sequences); otherwise none are computed.
  int prompt_logprobs = -1;
};

// Logprobs of a prompt's tokens under the model: position i >= 1 has log p(prompt[i] | prompt[<i])
// (log_softmax of the raw logits at row i - 1) and the top-k (token, logprob) at that position, best
// first; position 0 has 0 and none (nothing precedes it).
struct PromptLogprobs {
  std::vector<float> logprobs;                                // [n]
  std::vector<std::vector<std::pair<int32_t, float>>> top;    // [n]
  bool empty() const { return logprobs.empty(); }
};

// The estimated cost of prefill work, in token-layers: one prompt row through one layer's
// projections and MLP costs 1; causal attention over a segment of q rows adds
// attention_pair_weight for each of its q (q + 1) / 2 query-key pairs.
struct PrefillCostModel {
  double attention_pair_weight = 0;
  // From the model's shape: FLOPs of one attention pair (QK and PV, 4 H d) over the FLOPs of one
  // row's projections and MLP (2 x their weights), times the measured relative cost of a FLOP of
  // attention against a FLOP of GEMM on the CPU (kAttentionFlopCost, model_runner.cpp).
  static PrefillCostModel For(const model::ModelConfig& config);
  double SegmentLayerCost(int64_t rows) const {
    return static_cast<double>(rows) + attention_pair_weight * static_cast<double>(rows) * static_cast<double>(rows + 1) / 2;
  }
  // The cost of the whole prompt of n tokens through L layers with nothing cut.
  double PromptCost(int64_t n, int num_layers) const { return SegmentLayerCost(n) * num_layers; }
};

struct PrefillOptions {
  // Rows of the packed batch one chunk of a layer computes: the smallest slice of prefill work, and
  // what bounds one slice's wall time whatever the prompt's length. 0 = a whole layer per chunk.
  int64_t chunk_rows = 512;
};

// A sequence whose prefill completed in an Advance.
struct PrefilledSeq {
  size_t index = 0;             // its position in the seqs given to StartPrefill
  kv::SeqId seq = 0;
  int64_t next_position = 0;    // where decoding continues: n, or k after a two-pass re-index
  int num_slices = 0;           // Advance calls its prefill took part in
  PromptLogprobs prompt_logprobs;  // when PrefillSeq::prompt_logprobs >= 0 (and its rows allowed it)
};

// What one Advance did.
struct PrefillSlice {
  int num_chunks = 0;                  // chunks of layers run
  int num_layers_done = 0;             // layers finished (over the job's whole packed batch)
  double cost = 0;                     // their estimated cost (PrefillCostModel)
  int64_t token_layers = 0;            // rows the chunks computed (and a cut recomputed)
  std::vector<PrefilledSeq> done;      // sequences that finished in this call
  at::Tensor logits;                   // [done.size(), vocab] float32 on CPU: their last token's logits
};

class ModelRunner;

// A prefill in flight: one packed batch of prompts, between two Advance calls. It keeps the packed
// residual stream after the last layer run, the positions and segments of the current pass (after
// cuts), the sequences waiting for a second pass, and where each member stands. The members'
// policies keep their own state (rank ring, v0, selection) and the KV cache the finished layers.
class PrefillJob {
 public:
  struct Segment;  // rows of the packed batch shared by members with identical tokens (model_runner.cpp)

  PrefillJob() = default;
  PrefillJob(PrefillJob&&) noexcept;
  PrefillJob& operator=(PrefillJob&&) noexcept;
  ~PrefillJob();

  bool done() const;                   // every member finished or left
  int pass() const { return pass_; }   // 1, or 2 for the second pass of two-pass policies
  int layer() const { return layer_; } // the layer the current pass runs next
  int64_t row() const { return row_; } // the next row of that layer (0 = the layer not begun)
  // The sequences still in the job (not finished, not dropped).
  std::vector<kv::SeqId> members() const;
  // Rows computed so far, over layers and passes (identical prompts count once).
  int64_t token_layers() const { return token_layers_; }

 private:
  friend class ModelRunner;

  std::vector<PrefillSeq> seqs_;
  std::vector<char> in_job_;            // per seq: not finished, not dropped
  std::vector<int> num_slices_;         // per seq
  std::vector<int64_t> next_positions_; // per seq
  std::vector<Segment> batch_;          // the current pass's segments, in row order
  std::vector<Segment> next_pass_;      // members whose first pass ended, for the second pass
  at::Tensor x_;                        // [T, hidden] the residual stream entering layer_
  at::Tensor positions_;                // [T] int64 on CPU
  // The layer in progress, filled chunk by chunk (undefined before its first chunk).
  at::Tensor q_, k_, v_;                // [T, H, d], [T, Hkv, d] x2: rotated Q, K and V of every row
  at::Tensor x_out_;                    // [T, hidden] the residual stream leaving layer_
  int pass_ = 1;
  int layer_ = 0;
  int64_t row_ = 0;
  int64_t token_layers_ = 0;
};

struct PrefillOutput {
  at::Tensor logits;                   // [S, vocab] float32 on CPU: the last prompt token's logits
  // Per sequence: the positions decoding continues at (n, or k after a two-pass re-index).
  std::vector<int64_t> next_positions;
  // Rows the layers computed, summed over layers and passes: identical prompts in the batch count
  // once until their policies make them diverge.
  int64_t token_layers = 0;
  int num_slices = 0;                  // Advance calls it took
};

struct DecodeSeq {
  kv::SeqId seq = 0;
  int32_t token = 0;                   // the token to feed
  int64_t position = 0;                // its logical position
};

class ModelRunner {
 public:
  ModelRunner(const model::LlamaModel* model, kv::KvCache* kv, PrefillOptions options = {})
      : model_(model), kv_(kv), options_(options), cost_(PrefillCostModel::For(model->config())) {}

  const PrefillCostModel& cost_model() const { return cost_; }
  const PrefillOptions& options() const { return options_; }

  // Packs the prompts into a job; runs no layer yet. Fails (InvalidArgument) on an empty prompt.
  StatusOr<PrefillJob> StartPrefill(std::vector<PrefillSeq> seqs);
  // First drops every member for which keep(seq) is false (its rows leave the batch; its KV is the
  // caller's to free), then runs chunks while their estimated cost fits `budget`: always at least
  // one chunk, and all the rest when budget <= 0. A layer whose last chunk ran lets its policies
  // decide and store its KV; a pass that ends computes the logits of the sequences it finishes.
  // On error the job's state and its members' KV are unspecified: the caller fails and frees them.
  StatusOr<PrefillSlice> Advance(PrefillJob& job, double budget,
                                 const std::function<bool(kv::SeqId)>& keep = nullptr);
  // The estimated cost of the job's next chunk (0 when done).
  double NextChunkCost(const PrefillJob& job) const;

  // The whole prefill in one call (StartPrefill + Advance with budget `budget`, repeated).
  // Results are the same for any budget. On error the sequences' KV content is unspecified: the
  // caller frees them.
  StatusOr<PrefillOutput> Prefill(std::vector<PrefillSeq>& seqs, double budget = 0);
  // One token per sequence; appends its K/V to every layer. -> logits [B, vocab] float32 on CPU.
  StatusOr<at::Tensor> Decode(const std::vector<DecodeSeq>& seqs);

  // KV tokens stored per KV head for a sequence, summed over layers.
  int64_t KvTokens(kv::SeqId seq) const;

 private:
  // The next chunk's rows [row_, end) of the current layer.
  int64_t ChunkEnd(const PrefillJob& job) const;
  // Runs rows [row_, end) of the current layer: projections, attention over their segments' rows
  // so far, MLP.
  void RunChunk(PrefillJob& job, int64_t end);
  // The layer's last chunk ran: every member's policy decides, its KV is stored, the batch shrinks.
  Status EndLayer(PrefillJob& job);
  // The residual stream leaving layer `last` of the cached-prefix tokens at `positions` ([k] int64,
  // sorted, all inside the prefix of `a`), recomputed from their tokens against the prefix's cached
  // K/V: what a one-shot cut needs for the prefix tokens it keeps.
  at::Tensor RecomputePrefixRows(const PrefillJob& job, const PrefillJob::Segment& a, const at::Tensor& positions,
                                 int last);
  // The current pass has run every layer (or lost every segment): its members finish, with their
  // last row's logits appended to `slice`; members waiting for a second pass begin it.
  void EndPass(PrefillJob& job, PrefillSlice& slice);
  // Starts a pass over `segments`: merges identical ones, embeds their tokens.
  void BeginPass(PrefillJob& job, std::vector<PrefillJob::Segment> segments);
  void Drop(PrefillJob& job, const std::function<bool(kv::SeqId)>& keep);

  const model::LlamaModel* model_;
  kv::KvCache* kv_;
  PrefillOptions options_;
  PrefillCostModel cost_;
};

}  // namespace asl::runner

// The KV seam between the model and storage (docs/architecture.md). Attention never owns KV: the
// prefill writes what each layer keeps through Append, and decode reads it through Attend. The
// paged BlockPool implements it; DenseKvCache is the simple reference implementation.
//
// Thread: every call is made on the engine thread. Shapes: Hkv KV heads, d head dim.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "engine/common/status.h"

namespace asl::kv {

using SeqId = int64_t;

class KvCache {
 public:
  virtual ~KvCache() = default;

  // Registers a sequence with `num_layers` empty layers. Fails if the id exists.
  virtual Status AddSequence(SeqId seq) = 0;
  // Releases everything the sequence holds. Unknown ids are ignored.
  virtual void FreeSequence(SeqId seq) = 0;

  // Appends n tokens to (seq, layer). k, v: [Hkv, n, d], keys already rotated with their original
  // positions. Per KV head the tokens may differ but the count is the same (asl-method.md §5).
  // All-or-nothing: on error (out of space) nothing changed.
  virtual Status Append(SeqId seq, int layer, const at::Tensor& k, const at::Tensor& v) = 0;

  // Decode: appends one token to (seqs[b], layer) for every b. k, v: [B, Hkv, d].
  // All-or-nothing over the whole batch.
  virtual Status AppendDecode(int layer, const std::vector<SeqId>& seqs, const at::Tensor& k,
                              const at::Tensor& v) = 0;

  // Tokens stored for (seq, layer).
  virtual int64_t Length(SeqId seq, int layer) const = 0;

  // Decode attention at one layer for a batch: q [B, H, d] (one query token per sequence, already
  // rotated); sequence b attends all tokens stored for (seqs[b], layer), with GQA group H / Hkv.
  // Returns [B, H, d] in q's dtype; softmax is computed in float32.
  virtual at::Tensor Attend(int layer, const std::vector<SeqId>& seqs, const at::Tensor& q, double scale) const = 0;
};

}  // namespace asl::kv

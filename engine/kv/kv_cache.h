// The KV seam between the model and storage (docs/architecture.md). Attention never owns KV: the
// prefill writes what each layer keeps through Append, and decode reads it through Attend. The
// paged BlockPool implements it; DenseKvCache is the simple reference implementation.
//
// Thread: every call is made on the engine thread. Shapes: Hkv KV heads, d head dim.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
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

  // ---- Prefix cache (docs/architecture.md, "Prefix cache"). A KvCache without one (DenseKvCache)
  // keeps these defaults: no sequence has a cached prefix and offers to cache are ignored.
  //
  // Tokens of `seq`'s prompt prefix whose K/V is cached and pinned for it (the engine pins at
  // admission); its prefill computes only the tokens after them.
  virtual int64_t PrefixTokens(SeqId /*seq*/) const { return 0; }
  // The pinned prefix's K and V at `layer`: [Hkv, PrefixTokens, d] in the storage dtype.
  virtual std::pair<at::Tensor, at::Tensor> PrefixKv(SeqId seq, int layer) const;
  // The empty (seq, layer) starts with the pinned prefix, shared: it stores the prompt uncompressed.
  virtual Status SharePrefix(SeqId seq, int layer);
  // (seq, layer) holds the prompt ids[0, Length) in order: its whole blocks join the cache as they are.
  virtual void CacheTable(SeqId /*seq*/, int /*layer*/, const std::vector<int32_t>& /*ids*/) {}
  // Uncompressed K/V [Hkv, m, d] of the prompt tokens ids[first, first + m) at `layer`, which the
  // sequence does not store as they are: copies of their whole blocks join the cache, in free memory.
  virtual void CacheRows(int /*layer*/, const std::vector<int32_t>& /*ids*/, int64_t /*first*/, const at::Tensor& /*k*/,
                         const at::Tensor& /*v*/) {}
  // A sequence ends: the blocks of ids (prompt + fed outputs) its in-order layers hold join the cache.
  virtual void CacheSequence(SeqId /*seq*/, const std::vector<int32_t>& /*ids*/) {}
};

}  // namespace asl::kv

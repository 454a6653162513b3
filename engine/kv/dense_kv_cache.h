// DenseKvCache: the simple reference KvCache. Each (sequence, layer) keeps K and V as growing
// contiguous tensors [Hkv, len, d] (re-concatenated on every append), and Attend is plain ATen
// matmul/softmax in float32. Used by tests, by asl-cli's single-request paths, and as a fallback;
// the server uses PagedKvCache (block_pool.h).
//
// Thread: every call on the engine thread (or the one thread that owns the object).
// Ownership: owns its tensors. Storage dtype and device are those of the first Append to a
// (sequence, layer); later appends are converted to them. Failure: a call that returns an error
// changed nothing; AppendDecode validates the whole batch before touching any sequence.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/kv/kv_cache.h"

namespace asl::kv {

class DenseKvCache final : public KvCache {
 public:
  explicit DenseKvCache(int num_layers) : num_layers_(num_layers) {}

  Status AddSequence(SeqId seq) override;
  void FreeSequence(SeqId seq) override { seqs_.erase(seq); }
  Status Append(SeqId seq, int layer, const at::Tensor& k, const at::Tensor& v) override;
  Status AppendDecode(int layer, const std::vector<SeqId>& seqs, const at::Tensor& k,
                      const at::Tensor& v) override;
  int64_t Length(SeqId seq, int layer) const override;
  // Unknown sequences or a bad layer throw c10::Error (as PagedKvCache does).
  at::Tensor Attend(int layer, const std::vector<SeqId>& seqs, const at::Tensor& q, double scale) const override;

  // K and V of (seq, layer), [Hkv, len, d]; undefined tensors while empty. For tests.
  std::pair<at::Tensor, at::Tensor> Gather(SeqId seq, int layer) const;

  int num_layers() const { return num_layers_; }

 private:
  struct Layer {
    at::Tensor k;  // [Hkv, len, d], undefined while empty
    at::Tensor v;  // [Hkv, len, d]
  };
  const Layer* Find(SeqId seq, int layer) const;
  Status Check(SeqId seq, int layer, const at::Tensor& k, const at::Tensor& v) const;

  int num_layers_;
  std::unordered_map<SeqId, std::vector<Layer>> seqs_;  // seq -> [num_layers]
};

}  // namespace asl::kv

// The per-layer token scores and ranks of asl-method.md §2-§3, as pure functions on tensors.
// Everything is float32 whatever the run dtype (the reference computed logits in bf16, which
// creates ties; this project does not).
#pragma once

#include <ATen/core/Tensor.h>

#include <deque>

#include "engine/request.h"

namespace asl::prune {

// §2 steps 1-5: pooled window attention P [H, N] (N = q - W) for one sequence's tokens at one
// layer. q: [m, H, d] the last m >= W of the q tokens' queries (a cached prefix has none) and k:
// [q, Hkv, d] every token's key, both rotated. Chunks over heads so that at most
// `max_chunk_bytes` of probabilities exist at once. Requires q > W.
at::Tensor PooledWindowScores(const at::Tensor& q, const at::Tensor& k, int window, int kernel,
                              Pooling pooling, double scale, int64_t max_chunk_bytes = 64 << 20);

// §2 step 6: s[j] = Σ_h P[h, j] -> [N].
at::Tensor TokenScores(const at::Tensor& pooled);
// §2 step 6: s_g[j] = Σ_{h in group g} P[h, j] -> [Hkv, N].
at::Tensor KvHeadScores(const at::Tensor& pooled, int64_t num_kv_heads);

// Indices of `scores` ([N] or [rows, N]) ordered by descending score, ties by lower index first
// (a stable sort, so the order is reproducible).
at::Tensor DescendingOrder(const at::Tensor& scores);
// §3: rank[j] in 1..N as float32, 1 = highest score; ties by lower index.
at::Tensor Ranks(const at::Tensor& scores);

// The kept set (§3 step 5): the k highest-scored of the N scored tokens plus the W window tokens
// [N, N+W), sorted by position. order: DescendingOrder of the scores. -> [k + W] int64.
at::Tensor KeptSet(const at::Tensor& order, int64_t k, int64_t num_scored, int64_t window);

// §5: per KV head, the C - W highest s_g tokens plus the window, sorted -> [Hkv, C] int64.
// Requires q > C (q = N + W).
at::Tensor SnapKvKeep(const at::Tensor& kv_head_scores, int64_t budget, int64_t window);

// GemFilter's score (asl-method.md §7): last query (q's last row) against every key (k [q, Hkv, d]),
// raw inner products summed over all heads, average-pooled with `kernel` -> [q] float32.
at::Tensor GemFilterScores(const at::Tensor& q, const at::Tensor& k, int kernel);

// The ring of the last L_obs rank vectors and the relative-variance test of §3.
class RankVarianceTest {
 public:
  explicit RankVarianceTest(int obs_layers) : obs_layers_(obs_layers) {}
  void Push(at::Tensor ranks);  // [N] float32
  bool full() const { return static_cast<int>(ring_.size()) == obs_layers_; }
  // v: mean over the union of each layer's k best-ranked tokens of the population variance of
  // their ranks across the ring's layers. Requires full().
  double MeanRankVariance(int64_t k) const;

 private:
  int obs_layers_;
  std::deque<at::Tensor> ring_;
};

}  // namespace asl::prune

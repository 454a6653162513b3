#include "engine/prune/scoring.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

namespace asl::prune {

at::Tensor PooledWindowScores(const at::Tensor& q_in, const at::Tensor& k_in, int window, int kernel,
                              Pooling pooling, double scale, int64_t max_chunk_bytes) {
  const int64_t n = k_in.size(0), H = q_in.size(1), Hkv = k_in.size(1);
  const int64_t G = H / Hkv, W = window, N = n - W;
  ASL_CHECK(N > 0, "PooledWindowScores needs more tokens than the window");
  ASL_CHECK(q_in.size(0) >= W && q_in.size(0) <= n, "PooledWindowScores needs the window's queries");
  at::Tensor qw = q_in.narrow(0, q_in.size(0) - W, W).to(at::kFloat).transpose(0, 1);  // [H, W, d]
  at::Tensor kf = k_in.to(at::kFloat).transpose(0, 1);                  // [Hkv, n, d]
  // Causal mask inside the window: window query r sees window key c only when c <= r.
  at::Tensor mask = at::ones({W, W}, at::TensorOptions().dtype(at::kBool).device(q_in.device())).triu(1);

  const int64_t bytes_per_group = G * W * n * static_cast<int64_t>(sizeof(float));
  const int64_t groups_per_chunk = std::max<int64_t>(1, max_chunk_bytes / std::max<int64_t>(1, bytes_per_group));
  std::vector<at::Tensor> sums;
  for (int64_t g0 = 0; g0 < Hkv; g0 += groups_per_chunk) {
    const int64_t ng = std::min(groups_per_chunk, Hkv - g0);
    at::Tensor qc = qw.narrow(0, g0 * G, ng * G).reshape({ng, G * W, -1});        // [ng, G*W, d]
    at::Tensor z = at::bmm(qc, kf.narrow(0, g0, ng).transpose(1, 2)) * scale;       // [ng, G*W, n]
    z = z.view({ng * G, W, n});
    z.narrow(2, N, W).masked_fill_(mask, -std::numeric_limits<float>::infinity());
    at::Tensor a = at::softmax(z, -1);                                             // float32
    sums.push_back(a.narrow(2, 0, N).sum(1));                                      // [ng*G, N]
  }
  at::Tensor u = at::cat(sums, 0);  // [H, N]
  const int64_t pad = kernel / 2;
  if (pooling == Pooling::kAvg) {
    // count_include_pad=true: edges divide by S, as PyTorch's default (asl-method.md §2.5).
    return at::avg_pool1d(u, {kernel}, {1}, {pad}, /*ceil_mode=*/false, /*count_include_pad=*/true);
  }
  return at::max_pool1d(u, {kernel}, {1}, {pad});
}

at::Tensor TokenScores(const at::Tensor& pooled) { return pooled.sum(0); }

at::Tensor KvHeadScores(const at::Tensor& pooled, int64_t num_kv_heads) {
  const int64_t H = pooled.size(0), N = pooled.size(1);
  return pooled.view({num_kv_heads, H / num_kv_heads, N}).sum(1);
}

at::Tensor DescendingOrder(const at::Tensor& scores) {
  return std::get<1>(at::sort(scores, std::optional<bool>(true), -1, /*descending=*/true));
}

at::Tensor Ranks(const at::Tensor& scores) {
  const int64_t N = scores.size(0);
  at::Tensor order = DescendingOrder(scores);
  at::Tensor ranks = at::empty({N}, scores.options().dtype(at::kFloat));
  ranks.index_put_({order}, at::arange(1, N + 1, ranks.options()));
  return ranks;
}

at::Tensor KeptSet(const at::Tensor& order, int64_t k, int64_t num_scored, int64_t window) {
  at::Tensor top = order.narrow(0, 0, k);
  at::Tensor win = at::arange(num_scored, num_scored + window, top.options());
  return std::get<0>(at::sort(at::cat({top, win}), std::optional<bool>(true), -1, false));
}

at::Tensor SnapKvKeep(const at::Tensor& kv_head_scores, int64_t budget, int64_t window) {
  const int64_t Hkv = kv_head_scores.size(0), N = kv_head_scores.size(1);
  ASL_CHECK(N >= budget - window, "SnapKvKeep needs q > budget");
  at::Tensor top = DescendingOrder(kv_head_scores).narrow(1, 0, budget - window);  // [Hkv, C-W]
  at::Tensor win = at::arange(N, N + window, top.options()).unsqueeze(0).expand({Hkv, window});
  return std::get<0>(at::sort(at::cat({top, win}, 1), std::optional<bool>(true), 1));
}

at::Tensor GemFilterScores(const at::Tensor& q, const at::Tensor& k, int kernel) {
  const int64_t H = q.size(1), Hkv = k.size(1);
  at::Tensor q_last = q[q.size(0) - 1].to(at::kFloat).view({Hkv, H / Hkv, -1}).sum(1);  // [Hkv, d]
  // Σ_h q_h · k_g(h) = Σ_g (Σ_{h in g} q_h) · k_g
  at::Tensor s = at::einsum("gd,ngd->n", {q_last, k.to(at::kFloat)});          // [n]
  return at::avg_pool1d(s.unsqueeze(0), {kernel}, {1}, {kernel / 2}, false, true).squeeze(0);
}

void RankVarianceTest::Push(at::Tensor ranks) {
  ring_.push_back(std::move(ranks));
  if (static_cast<int>(ring_.size()) > obs_layers_) ring_.pop_front();
}

double RankVarianceTest::MeanRankVariance(int64_t k) const {
  ASL_CHECK(full(), "rank ring not full");
  at::Tensor x = at::stack(std::vector<at::Tensor>(ring_.begin(), ring_.end()));  // [L_obs, N]
  const int64_t N = x.size(1);
  // Token j is among a layer's k best exactly when its rank there is <= k (ranks are a permutation).
  at::Tensor in_union = (x <= static_cast<float>(std::min(k, N))).any(0);          // [N]
  at::Tensor cols = x.index({at::indexing::Slice(), in_union}).to(at::kDouble);     // [L_obs, |U|]
  at::Tensor var = cols.var(/*dim=*/0, /*unbiased=*/false);
  return var.mean().item<double>();
}

}  // namespace asl::prune

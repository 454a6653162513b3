#include "engine/runner/model_runner.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <iterator>
#include <tuple>
#include <utility>

#include "engine/prune/scoring.h"

namespace asl::runner {

// A segment of the packed batch: `count` rows, in batch order, shared by every member. Sequences
// with identical tokens at identical positions (the same prompt, e.g. one prompt under several
// policies or n completions of it) share one segment: their rows are the same numbers, so the
// forward pass computes them once. A member whose policy cuts it leaves with a copy of the rows it
// selected; members that never cut share to the end.
//
// A segment of a prompt whose first `prefix` tokens are cached (pinned by its members' sequences)
// holds rows for the tokens after them only: they attend the prefix's cached K/V first.
struct PrefillJob::Segment {
  std::vector<size_t> members;  // indices into the job's seqs
  int64_t count = 0;
  at::Tensor token_ids;   // [count] int64 on CPU: which prompt tokens these rows are
  at::Tensor positions;   // [count] int64 on CPU: original positions (re-indexed in pass 2)
  // The prompt's tokens 0..count-1 (after `prefix`) in order: pass 1 and never cut.
  bool in_prompt_order = true;
  int64_t prefix = 0;     // cached prompt tokens before the rows (positions 0..prefix-1)
  at::Tensor prefix_ids;  // [prefix] int64 on CPU
  at::Tensor prefix_k, prefix_v;  // [prefix, Hkv, d] the layer in progress's cached K/V (compute dtype)
};

PrefillJob::PrefillJob(PrefillJob&&) noexcept = default;
PrefillJob& PrefillJob::operator=(PrefillJob&&) noexcept = default;
PrefillJob::~PrefillJob() = default;

bool PrefillJob::done() const { return batch_.empty() && next_pass_.empty(); }

std::vector<kv::SeqId> PrefillJob::members() const {
  std::vector<kv::SeqId> out;
  for (size_t i = 0; i < seqs_.size(); ++i) {
    if (in_job_[i]) out.push_back(seqs_[i].seq);
  }
  return out;
}

namespace {

using Segment = PrefillJob::Segment;

// Per KV head, the rows `keep` [Hkv, C] of x [T, Hkv, d] -> [Hkv, C, d]; all rows when undefined.
at::Tensor GatherPerHead(const at::Tensor& x, const at::Tensor& keep) {
  at::Tensor xt = x.transpose(0, 1);  // [Hkv, T, d]
  if (!keep.defined()) return xt.contiguous();
  at::Tensor idx = keep.to(x.device()).unsqueeze(-1).expand({keep.size(0), keep.size(1), x.size(2)});
  return at::gather(xt, 1, idx);
}

at::Tensor RowRange(int64_t start, int64_t count, const at::Device& device) {
  return at::arange(start, start + count, at::TensorOptions().dtype(at::kLong).device(device));
}

// One segment per distinct (tokens, positions); the members of equal ones are joined.
std::vector<Segment> MergeIdentical(std::vector<Segment> batch) {
  std::vector<Segment> merged;
  for (Segment& a : batch) {
    auto same = std::find_if(merged.begin(), merged.end(), [&](const Segment& m) {
      return m.count == a.count && m.prefix == a.prefix && m.in_prompt_order == a.in_prompt_order &&
             at::equal(m.token_ids, a.token_ids) && at::equal(m.positions, a.positions);
    });
    if (same == merged.end()) {
      merged.push_back(std::move(a));
    } else {
      same->members.insert(same->members.end(), a.members.begin(), a.members.end());
    }
  }
  return merged;
}

// Measured on the 2-core development machine (bench/results/prefill_slices.md, "Cost model"): one FLOP of
// prefill attention (libtorch's CPU flash attention) costs this many FLOPs of projection GEMM time.
constexpr double kAttentionFlopCost = 1.0;

}  // namespace

PrefillCostModel PrefillCostModel::For(const model::ModelConfig& c) {
  const double hd = static_cast<double>(c.num_heads * c.head_dim);
  const double kvd = static_cast<double>(c.num_kv_heads * c.head_dim);
  const double h = static_cast<double>(c.hidden_size);
  const double weights = h * hd * 2 + h * kvd * 2 + 3 * h * static_cast<double>(c.intermediate_size);
  PrefillCostModel m;
  m.attention_pair_weight = kAttentionFlopCost * (4 * hd) / (2 * weights);
  return m;
}

void ModelRunner::BeginPass(PrefillJob& job, std::vector<Segment> segments) {
  job.batch_ = MergeIdentical(std::move(segments));
  job.layer_ = 0;
  job.row_ = 0;
  if (job.batch_.empty()) return;
  std::vector<at::Tensor> ids, pos;
  for (const Segment& a : job.batch_) {
    ids.push_back(a.token_ids);
    pos.push_back(a.positions);
  }
  job.x_ = model_->Embed(at::cat(ids));  // [T, hidden]
  job.positions_ = at::cat(pos);         // [T]
}

StatusOr<PrefillJob> ModelRunner::StartPrefill(std::vector<PrefillSeq> seqs) {
  try {
    PrefillJob job;
    std::vector<Segment> batch;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int64_t n = static_cast<int64_t>(seqs[i].prompt_ids.size());
      if (n == 0) return InvalidArgument("prefill of an empty prompt");
      const int64_t prefix = kv_->PrefixTokens(seqs[i].seq);
      if (prefix < 0 || prefix >= n) return InvalidArgument("prefill: a cached prefix must leave a token to compute");
      at::Tensor ids = at::tensor(seqs[i].prompt_ids, at::kInt).to(at::kLong);
      Segment a;
      a.members = {i};
      a.prefix = prefix;
      a.prefix_ids = ids.narrow(0, 0, prefix);
      a.token_ids = ids.narrow(0, prefix, n - prefix);
      a.count = n - prefix;
      a.positions = at::arange(prefix, n, at::kLong);
      batch.push_back(std::move(a));
    }
    job.in_job_.assign(seqs.size(), 1);
    job.num_slices_.assign(seqs.size(), 0);
    for (const PrefillSeq& s : seqs) job.next_positions_.push_back(static_cast<int64_t>(s.prompt_ids.size()));
    job.seqs_ = std::move(seqs);
    BeginPass(job, std::move(batch));
    return job;
  } catch (const c10::Error& e) {
    return Internal(std::string("prefill failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("prefill failed: ") + e.what());
  }
}

int64_t ModelRunner::ChunkEnd(const PrefillJob& job) const {
  const int64_t total = job.x_.defined() ? job.x_.size(0) : 0;
  if (options_.chunk_rows <= 0) return total;
  return std::min(total, job.row_ + options_.chunk_rows);
}

double ModelRunner::NextChunkCost(const PrefillJob& job) const {
  auto chunk_cost = [&](const std::vector<Segment>& segments, int64_t begin, int64_t end) {
    // Rows, plus each segment's query-key pairs of the chunk's rows: local row i attends the cached
    // prefix and i + 1 keys.
    double pairs = 0;
    int64_t start = 0;
    for (const Segment& a : segments) {
      const int64_t l0 = std::max<int64_t>(begin - start, 0), l1 = std::min<int64_t>(end - start, a.count);
      if (l1 > l0) {
        pairs += (static_cast<double>(l1) * (l1 + 1) - static_cast<double>(l0) * (l0 + 1)) / 2 +
                 static_cast<double>(l1 - l0) * static_cast<double>(a.prefix);
      }
      start += a.count;
    }
    return static_cast<double>(end - begin) + cost_.attention_pair_weight * pairs;
  };
  if (!job.batch_.empty()) return chunk_cost(job.batch_, job.row_, ChunkEnd(job));
  // Between passes: the second pass's first chunk.
  int64_t rows = 0;
  for (const Segment& a : job.next_pass_) rows += a.count;
  const int64_t end = options_.chunk_rows > 0 ? std::min(rows, options_.chunk_rows) : rows;
  return rows == 0 ? 0 : chunk_cost(job.next_pass_, 0, end);
}

void ModelRunner::Drop(PrefillJob& job, const std::function<bool(kv::SeqId)>& keep) {
  if (!keep) return;
  std::vector<char> gone(job.seqs_.size(), 0);
  bool any = false;
  for (size_t i = 0; i < job.seqs_.size(); ++i) {
    if (job.in_job_[i] && !keep(job.seqs_[i].seq)) {
      gone[i] = 1;
      job.in_job_[i] = 0;
      any = true;
    }
  }
  if (!any) return;
  auto strip = [&](Segment& a) {
    a.members.erase(std::remove_if(a.members.begin(), a.members.end(), [&](size_t m) { return gone[m] != 0; }),
                    a.members.end());
    return a.members.empty();
  };
  job.next_pass_.erase(std::remove_if(job.next_pass_.begin(), job.next_pass_.end(), strip), job.next_pass_.end());
  // Segments with no member left leave the packed batch with their rows, also those of the layer
  // in progress; the rows already done stay a prefix.
  std::vector<at::Tensor> rows;
  std::vector<Segment> kept;
  int64_t offset = 0, row = 0;
  for (Segment& a : job.batch_) {
    const int64_t start = offset;
    offset += a.count;
    if (strip(a)) continue;
    rows.push_back(RowRange(start, a.count, job.x_.device()));
    row += std::clamp<int64_t>(job.row_ - start, 0, a.count);
    kept.push_back(std::move(a));
  }
  if (kept.size() == job.batch_.size()) return;
  job.batch_ = std::move(kept);
  job.row_ = row;
  if (job.batch_.empty()) {
    job.x_ = job.positions_ = job.q_ = job.k_ = job.v_ = job.x_out_ = at::Tensor();
    return;
  }
  at::Tensor index = at::cat(rows);
  job.x_ = job.x_.index_select(0, index);
  job.positions_ = job.positions_.index_select(0, index.cpu());
  for (at::Tensor* t : {&job.q_, &job.k_, &job.v_, &job.x_out_}) {
    if (t->defined()) *t = t->index_select(0, index);
  }
}

void ModelRunner::RunChunk(PrefillJob& job, int64_t end) {
  const model::LlamaModel& m = *model_;
  const int layer = job.layer_;
  const int64_t begin = job.row_, n = end - begin;
  if (begin == 0) {
    // The layer's first chunk: room for every row's Q, K, V and output.
    const int64_t T = job.x_.size(0);
    const auto& c = m.config();
    const auto opts = job.x_.options();
    job.q_ = at::empty({T, c.num_heads, c.head_dim}, opts);
    job.k_ = at::empty({T, c.num_kv_heads, c.head_dim}, opts);
    job.v_ = at::empty({T, c.num_kv_heads, c.head_dim}, opts);
    job.x_out_ = at::empty_like(job.x_);
    for (Segment& a : job.batch_) {
      if (a.prefix == 0) continue;
      auto [pk, pv] = kv_->PrefixKv(job.seqs_[a.members[0]].seq, layer);  // [Hkv, prefix, d]
      a.prefix_k = pk.to(job.x_.device(), job.x_.scalar_type()).transpose(0, 1).contiguous();
      a.prefix_v = pv.to(job.x_.device(), job.x_.scalar_type()).transpose(0, 1).contiguous();
    }
  }
  job.token_layers_ += n;
  at::Tensor x = job.x_.narrow(0, begin, n);
  model::Rope rope = m.RopeFor(job.positions_.narrow(0, begin, n));
  model::Qkv qkv = m.AttentionInputs(layer, x, rope, model::Rows::kTokens);
  job.q_.narrow(0, begin, n).copy_(qkv.q);
  job.k_.narrow(0, begin, n).copy_(qkv.k);
  job.v_.narrow(0, begin, n).copy_(qkv.v);
  // Each segment's rows in the chunk attend its cached prefix and its rows up to themselves (causal).
  std::vector<at::Tensor> attn_parts;
  int64_t start = 0;
  for (const Segment& a : job.batch_) {
    const int64_t c0 = std::max(begin, start), c1 = std::min(end, start + a.count);
    if (c1 > c0) {
      at::Tensor k = job.k_.narrow(0, start, c1 - start), v = job.v_.narrow(0, start, c1 - start);
      if (a.prefix > 0) {
        k = at::cat({a.prefix_k, k});
        v = at::cat({a.prefix_v, v});
      }
      attn_parts.push_back(m.CausalAttention(job.q_.narrow(0, c0, c1 - c0), k, v));
    }
    start += a.count;
  }
  at::Tensor h = x + m.AttentionOutput(layer, attn_parts.size() == 1 ? attn_parts[0] : at::cat(attn_parts),
                                       model::Rows::kTokens);
  job.x_out_.narrow(0, begin, n).copy_(h + m.Mlp(layer, h, model::Rows::kTokens));
  job.row_ = end;
}

Status ModelRunner::EndLayer(PrefillJob& job) {
  const model::LlamaModel& m = *model_;
  const double scale = m.attention_scale();
  const int layer = job.layer_;
  std::vector<Segment>& batch = job.batch_;
  std::vector<PrefillSeq>& seqs = job.seqs_;
  std::vector<std::vector<prune::LayerPlan>> plans(batch.size());  // per segment, per member
  bool changed = false;
  int64_t offset = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    Segment& a = batch[i];
    // The segment's queries, and the keys and values of all its tokens: cached prefix, then rows.
    at::Tensor q = job.q_.narrow(0, offset, a.count);
    at::Tensor k = job.k_.narrow(0, offset, a.count), v = job.v_.narrow(0, offset, a.count);
    offset += a.count;
    const at::Tensor k_rows = k, v_rows = v;
    if (a.prefix > 0) {
      k = at::cat({a.prefix_k, k});
      v = at::cat({a.prefix_v, v});
    }
    const int64_t tokens = a.prefix + a.count;
    // Members of one segment share its Q/K, so their scores are computed once per scoring setting.
    std::vector<std::pair<std::tuple<int, int, Pooling>, at::Tensor>> pooled_by_setting;
    at::Tensor gem_shared;
    int64_t stored_in_order = -1;  // a member whose table now holds the prompt's tokens in order
    for (size_t member : a.members) {
      prune::PruningPolicy& policy = *seqs[member].policy;
      const PruningParams& p = policy.params();
      const prune::ScoreNeeds needs = policy.Needs(layer, tokens);
      at::Tensor pooled, gem;
      if (needs.window_scores) {
        const auto setting = std::make_tuple(p.window, p.kernel, p.pooling);
        auto it = std::find_if(pooled_by_setting.begin(), pooled_by_setting.end(),
                               [&](const auto& e) { return e.first == setting; });
        if (it == pooled_by_setting.end()) {
          pooled_by_setting.emplace_back(setting, prune::PooledWindowScores(q, k, p.window, p.kernel, p.pooling, scale));
          it = std::prev(pooled_by_setting.end());
        }
        pooled = it->second;
      }
      if (needs.gem_scores) {
        if (!gem_shared.defined()) gem_shared = prune::GemFilterScores(q, k, /*kernel=*/5);
        gem = gem_shared;
      }
      const bool storing = !policy.in_first_pass();
      prune::LayerPlan plan = policy.OnLayer(layer, tokens, pooled, gem);
      policy.mutable_report().prefill_token_layers -= a.prefix;  // the cached prefix was not computed
      if (storing) {
        const kv::SeqId seq = seqs[member].seq;
        if (!plan.kv_keep.defined() && a.prefix > 0) {
          // Everything is stored: the cached prefix's blocks are shared, not copied (a sequence
          // that stores its whole prompt may have them in its tables from admission).
          if (kv_->Length(seq, layer) == 0) ASL_RETURN_IF_ERROR(kv_->SharePrefix(seq, layer));
          ASL_CHECK(kv_->Length(seq, layer) == a.prefix, "prefill: the shared prefix disagrees with the segment");
          ASL_RETURN_IF_ERROR(kv_->Append(seq, layer, k_rows.transpose(0, 1).contiguous(), v_rows.transpose(0, 1).contiguous()));
        } else {
          ASL_CHECK(kv_->Length(seq, layer) == 0, "prefill: a compressed layer must start empty");
          ASL_RETURN_IF_ERROR(kv_->Append(seq, layer, GatherPerHead(k, plan.kv_keep), GatherPerHead(v, plan.kv_keep)));
        }
        if (!plan.kv_keep.defined() && a.in_prompt_order && seqs[member].cache_prompt) stored_in_order = static_cast<int64_t>(member);
      }
      changed |= plan.select.defined();
      plans[i].push_back(std::move(plan));
    }
    // The prefix cache gets this layer's uncompressed K/V of the prompt: as the table that holds
    // them, else as copies (whole blocks only; the pool skips what it has).
    if (a.in_prompt_order) {
      const bool offered = std::any_of(a.members.begin(), a.members.end(), [&](size_t mb) { return seqs[mb].cache_prompt; });
      if (stored_in_order >= 0) {
        kv_->CacheTable(seqs[static_cast<size_t>(stored_in_order)].seq, layer, seqs[static_cast<size_t>(stored_in_order)].prompt_ids);
      } else if (offered) {
        kv_->CacheRows(layer, seqs[a.members[0]].prompt_ids, a.prefix, k_rows.transpose(0, 1), v_rows.transpose(0, 1));
      }
    }
  }
  at::Tensor& x = job.x_;
  x = job.x_out_;
  job.q_ = job.k_ = job.v_ = job.x_out_ = at::Tensor();
  for (Segment& a : batch) a.prefix_k = a.prefix_v = at::Tensor();
  job.layer_ = layer + 1;
  job.row_ = 0;
  if (!changed) return Status::Ok();

  // Shrink the packed batch: a sequence cut here keeps its selected rows (with their original
  // positions, §4) as a segment of its own; a sequence whose first pass ended leaves for pass 2
  // (§7); the segment's other members keep its rows. Selected tokens of a cached prefix have no
  // rows: their residual stream is recomputed (RecomputePrefixRows).
  std::vector<at::Tensor> x_parts, pos_parts;
  std::vector<Segment> next;
  offset = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    Segment& a = batch[i];
    const int64_t start = offset;
    offset += a.count;
    std::vector<size_t> staying;
    for (size_t j = 0; j < a.members.size(); ++j) {
      const size_t member = a.members[j];
      const prune::LayerPlan& plan = plans[i][j];
      if (!plan.select.defined()) {
        staying.push_back(member);
        continue;
      }
      const at::Tensor select = plan.select.cpu();  // into [prefix ids..., rows...]
      Segment cut;
      cut.members = {member};
      cut.in_prompt_order = false;
      const at::Tensor all_ids = a.prefix > 0 ? at::cat({a.prefix_ids, a.token_ids}) : a.token_ids;
      const at::Tensor all_pos = a.prefix > 0 ? at::cat({at::arange(a.prefix, at::kLong), a.positions}) : a.positions;
      at::Tensor kept = all_pos.index_select(0, select).contiguous();
      seqs[member].policy->mutable_report().selected_positions.assign(
          kept.data_ptr<int64_t>(), kept.data_ptr<int64_t>() + kept.numel());
      cut.token_ids = all_ids.index_select(0, select);
      cut.count = cut.token_ids.size(0);
      if (plan.end_pass) {
        cut.positions = at::arange(cut.count, at::kLong);
        job.next_pass_.push_back(std::move(cut));
        continue;
      }
      cut.positions = kept;
      const int64_t num_in_prefix = (select < a.prefix).sum().item<int64_t>();  // select is sorted
      if (num_in_prefix > 0) {
        x_parts.push_back(RecomputePrefixRows(job, a, kept.narrow(0, 0, num_in_prefix), layer));
        job.token_layers_ += num_in_prefix * (layer + 1);
        seqs[member].policy->mutable_report().prefill_token_layers += num_in_prefix * (layer + 1);
      }
      const at::Tensor in_rows = select.narrow(0, num_in_prefix, select.size(0) - num_in_prefix) - a.prefix;
      x_parts.push_back(x.index_select(0, (in_rows + start).to(x.device())));
      pos_parts.push_back(kept);
      next.push_back(std::move(cut));
    }
    if (staying.empty()) continue;
    a.members = std::move(staying);
    x_parts.push_back(x.narrow(0, start, a.count));
    pos_parts.push_back(job.positions_.narrow(0, start, a.count));
    next.push_back(std::move(a));
  }
  batch = std::move(next);
  if (batch.empty()) {
    x = at::Tensor();
    job.positions_ = at::Tensor();
    return Status::Ok();
  }
  x = at::cat(x_parts);
  job.positions_ = at::cat(pos_parts);
  return Status::Ok();
}

at::Tensor ModelRunner::RecomputePrefixRows(const PrefillJob& job, const Segment& a, const at::Tensor& positions,
                                            int last) {
  const model::LlamaModel& m = *model_;
  const kv::SeqId seq = job.seqs_[a.members[0]].seq;
  at::Tensor x = m.Embed(a.prefix_ids.index_select(0, positions));
  model::Rope rope = m.RopeFor(positions);
  for (int layer = 0; layer <= last; ++layer) {
    // Each token's path to here depends only on earlier tokens' K/V, which the cache holds.
    model::Qkv qkv = m.AttentionInputs(layer, x, rope, model::Rows::kTokens);
    auto [pk, pv] = kv_->PrefixKv(seq, layer);
    at::Tensor k = pk.to(x.device(), x.scalar_type()).transpose(0, 1);
    at::Tensor v = pv.to(x.device(), x.scalar_type()).transpose(0, 1);
    at::Tensor h = x + m.AttentionOutput(layer, m.AttentionAt(qkv.q, k, v, positions), model::Rows::kTokens);
    x = h + m.Mlp(layer, h, model::Rows::kTokens);
  }
  return x;
}

// The logprobs of a segment's prompt tokens from its rows `x` ([n, hidden], the residual stream
// after the last layer, positions 0..n-1), with `k` alternatives. Rows go through the LM head in
// chunks, so the [rows, vocab] logits stay small.
static PromptLogprobs ComputePromptLogprobs(const model::LlamaModel& model, const at::Tensor& x,
                                     const std::vector<int32_t>& ids, int k) {
  constexpr int64_t kRowsPerChunk = 64;
  const int64_t n = x.size(0);
  PromptLogprobs out;
  out.logprobs.assign(static_cast<size_t>(n), 0.f);
  out.top.resize(static_cast<size_t>(n));
  for (int64_t lo = 0; lo + 1 < n; lo += kRowsPerChunk) {
    const int64_t hi = std::min(n - 1, lo + kRowsPerChunk);  // row r predicts token r + 1
    at::Tensor ls = at::log_softmax(model.Logits(x.slice(0, lo, hi)).to(at::kCPU, at::kFloat), -1).contiguous();
    const auto lsa = ls.accessor<float, 2>();
    at::Tensor top_v, top_i;
    if (k > 0) std::tie(top_v, top_i) = at::topk(ls, std::min<int64_t>(k, ls.size(1)), -1);
    for (int64_t r = lo; r < hi; ++r) {
      const size_t p = static_cast<size_t>(r + 1);
      out.logprobs[p] = lsa[r - lo][ids[p]];
      if (k <= 0) continue;
      const auto va = top_v.accessor<float, 2>();
      const auto ia = top_i.accessor<int64_t, 2>();
      for (int64_t j = 0; j < top_v.size(1); ++j) {
        out.top[p].emplace_back(static_cast<int32_t>(ia[r - lo][j]), va[r - lo][j]);
      }
    }
  }
  return out;
}

void ModelRunner::EndPass(PrefillJob& job, PrefillSlice& slice) {
  // Sequences that ran every layer of this pass finish with their last row.
  std::vector<at::Tensor> last_rows;
  int64_t offset = 0;
  for (const Segment& a : job.batch_) {
    offset += a.count;
    // Prompt logprobs for the members that asked, once per segment (they share its rows); only a
    // whole prompt in order has a row for every position.
    int k = -1;
    for (size_t member : a.members) k = std::max(k, job.seqs_[member].prompt_logprobs);
    PromptLogprobs prompt_logprobs;
    if (k >= 0 && job.pass_ == 1 && a.in_prompt_order && a.prefix == 0 &&
        a.count == static_cast<int64_t>(job.seqs_[a.members[0]].prompt_ids.size())) {
      prompt_logprobs = ComputePromptLogprobs(*model_, job.x_.slice(0, offset - a.count, offset),
                                              job.seqs_[a.members[0]].prompt_ids, k);
    }
    for (size_t member : a.members) {
      last_rows.push_back(job.x_[offset - 1]);
      job.in_job_[member] = 0;
      slice.done.push_back(PrefilledSeq{member, job.seqs_[member].seq, job.next_positions_[member],
                                        job.num_slices_[member], {}});
      const int own = job.seqs_[member].prompt_logprobs;
      if (own >= 0 && !prompt_logprobs.empty()) {
        PromptLogprobs& mine = slice.done.back().prompt_logprobs;
        mine = prompt_logprobs;
        for (auto& top : mine.top) top.resize(std::min(top.size(), static_cast<size_t>(own)));
      }
    }
  }
  if (!last_rows.empty()) {
    at::Tensor logits = model_->Logits(at::stack(last_rows)).cpu();
    slice.logits = slice.logits.defined() ? at::cat({slice.logits, logits}) : logits;
  }
  job.batch_.clear();
  job.x_ = at::Tensor();
  job.positions_ = at::Tensor();
  ASL_CHECK(job.pass_ == 1 || job.next_pass_.empty(), "a second pass cannot end another pass");
  if (job.next_pass_.empty()) return;
  // Two-pass policies (§7): pass 2 runs the selected tokens, re-indexed to 0..k-1, with full KV.
  for (const Segment& a : job.next_pass_) {
    job.seqs_[a.members[0]].policy->BeginSecondPass(a.count);
    job.next_positions_[a.members[0]] = a.count;
  }
  job.pass_ = 2;
  BeginPass(job, std::move(job.next_pass_));
  job.next_pass_.clear();
}

StatusOr<PrefillSlice> ModelRunner::Advance(PrefillJob& job, double budget,
                                            const std::function<bool(kv::SeqId)>& keep) {
  try {
    Drop(job, keep);
    PrefillSlice slice;
    for (size_t i = 0; i < job.seqs_.size(); ++i) {
      if (job.in_job_[i]) job.num_slices_[i]++;
    }
    const int num_layers = static_cast<int>(model_->config().num_layers);
    while (!job.done()) {
      if (job.batch_.empty() || job.layer_ >= num_layers) {
        EndPass(job, slice);
        continue;
      }
      // A layer can have no rows left to compute: the sequences whose rows were still to come
      // in it left the batch (Drop) after the others' rows were done. It only needs its end.
      if (job.row_ < job.x_.size(0)) {
        const double cost = NextChunkCost(job);
        if (budget > 0 && slice.num_chunks > 0 && slice.cost + cost > budget) break;
        const int64_t end = ChunkEnd(job);
        slice.token_layers += end - job.row_;
        RunChunk(job, end);
        slice.num_chunks++;
        slice.cost += cost;
        if (job.row_ < job.x_.size(0)) continue;
      }
      const int64_t rows_before = job.token_layers_;
      ASL_RETURN_IF_ERROR(EndLayer(job));
      slice.token_layers += job.token_layers_ - rows_before;  // a cut's recomputed prefix rows
      slice.num_layers_done++;
      // A pass that just ended finishes its sequences in this call, not in the next.
      if (job.batch_.empty() || job.layer_ >= num_layers) EndPass(job, slice);
    }
    // Finished sequences report the slices they took, this one included.
    for (PrefilledSeq& d : slice.done) d.num_slices = job.num_slices_[d.index];
    return slice;
  } catch (const c10::Error& e) {
    return Internal(std::string("prefill failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("prefill failed: ") + e.what());
  }
}

StatusOr<PrefillOutput> ModelRunner::Prefill(std::vector<PrefillSeq>& seqs, double budget) {
  ASL_ASSIGN_OR_RETURN(PrefillJob job, StartPrefill(seqs));
  PrefillOutput out;
  out.next_positions.assign(seqs.size(), 0);
  std::vector<at::Tensor> rows(seqs.size());
  while (!job.done()) {
    ASL_ASSIGN_OR_RETURN(PrefillSlice slice, Advance(job, budget));
    out.num_slices++;
    for (size_t j = 0; j < slice.done.size(); ++j) {
      rows[slice.done[j].index] = slice.logits[static_cast<int64_t>(j)];
      out.next_positions[slice.done[j].index] = slice.done[j].next_position;
    }
  }
  out.token_layers = job.token_layers();
  try {
    out.logits = at::stack(rows);
  } catch (const c10::Error& e) {
    return Internal(std::string("prefill failed: ") + e.what_without_backtrace());
  }
  return out;
}

StatusOr<at::Tensor> ModelRunner::Decode(const std::vector<DecodeSeq>& seqs) {
  try {
    const model::LlamaModel& m = *model_;
    const auto& c = m.config();
    std::vector<int64_t> tokens, positions;
    std::vector<kv::SeqId> ids;
    for (const DecodeSeq& s : seqs) {
      tokens.push_back(s.token);
      positions.push_back(s.position);
      ids.push_back(s.seq);
    }
    const int64_t B = static_cast<int64_t>(seqs.size());
    at::Tensor x = m.Embed(at::tensor(tokens, at::kLong)).to(m.decode_dtype());
    model::Rope rope = m.RopeFor(at::tensor(positions, at::kLong));
    for (int layer = 0; layer < c.num_layers; ++layer) {
      model::Qkv qkv = m.AttentionInputs(layer, x, rope, model::Rows::kPerSequence);
      ASL_RETURN_IF_ERROR(kv_->AppendDecode(layer, ids, qkv.k, qkv.v));
      at::Tensor attn = kv_->Attend(layer, ids, qkv.q, m.attention_scale());  // [B, H, d]
      x = x + m.AttentionOutput(layer, attn.reshape({B, c.num_heads * c.head_dim}), model::Rows::kPerSequence);
      x = x + m.Mlp(layer, x, model::Rows::kPerSequence);
    }
    return m.Logits(x).cpu();
  } catch (const c10::Error& e) {
    return Internal(std::string("decode failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Internal(std::string("decode failed: ") + e.what());
  }
}

int64_t ModelRunner::KvTokens(kv::SeqId seq) const {
  int64_t total = 0;
  for (int layer = 0; layer < model_->config().num_layers; ++layer) total += kv_->Length(seq, layer);
  return total;
}

}  // namespace asl::runner
